"""What both webhooks share: JSON bodies with their exact text, schema validation, email addresses."""
