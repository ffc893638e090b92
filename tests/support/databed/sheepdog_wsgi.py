"""Serves the real sheepdog for the data-plane bed with the app settings in $SHEEPDOG_BED_CONFIG (JSON), in place of its bin/settings.py, which reads them from /var/www."""

import json
import os

from sheepdog.api import app, app_init

app.config.update(json.loads(os.environ["SHEEPDOG_BED_CONFIG"]))
app.config["INDEX_CLIENT"]["auth"] = tuple(app.config["INDEX_CLIENT"]["auth"])
app_init(app)
application = app
