"""Serves real Fence under /user by stripping the prefix, as Gen3's revproxy does (SCRIPT_NAME would make Fence advertise /user/user/...)."""

import os

from fence import app, app_init

# root_dir is where Fence looks for keys/<name>/jwt_*_key.pem: the test bed's own, not the source tree.
app_init(app, root_dir=os.environ["FENCEBED_ROOT"])

PREFIX = "/user"


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"only /user is served here\n"]
    environ["PATH_INFO"] = path[len(PREFIX):] or "/"
    return app(environ, start_response)
