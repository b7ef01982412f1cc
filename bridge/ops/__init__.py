"""What operators do, shared by the CLI and the admin page. No Flask and no click here: each function
takes the bridge's objects (``wiring.Bridge``) and returns plain data."""
