"""Serves the real indexd for the data-plane bed; its settings come from $INDEXD_SETTINGS/local_settings.py."""

from indexd import get_app

application = get_app()
