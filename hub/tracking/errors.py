"""Errors of the MLflow service, in MLflow's own JSON shape so MLflow clients print the message."""

from tornado import web

STORE_FULL_MESSAGE = ("the platform's MLflow store is out of disk space: nothing was recorded; "
                      "ask the platform operator to free space, then log again")


class MLflowError(web.HTTPError):
    """An error in MLflow's own JSON shape, so MLflow clients print the message."""

    def __init__(self, status, error_code, message):
        super().__init__(status, message)
        self.error_code = error_code
        self.message = message

