"""What runs inside a user's notebook server: widgets, magics, the session endpoint."""
