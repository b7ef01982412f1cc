"""mailjet-segment-bridge: Mailjet email events to Segment, Segment identifies to Mailjet.

Importing the package does nothing: ``bridge.app.create_app`` builds the web app, and
``bridge.wiring.build`` the objects the app, the CLI and the server share.
"""

__version__ = "0.1.0"

#: Our name in Segment's ``context.library`` (how the outbound loop guard knows our own calls) and in
#: the User-Agent of every call to Segment and Mailjet.
NAME = "mailjet-segment-bridge"
USER_AGENT = f"{NAME}/{__version__}"
