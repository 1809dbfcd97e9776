"""The environment's Celery settings as a module, for ``app.config_from_object("celeryconfig")``: what
``worker.broker.celeryconfig.config_for`` gives for the environment's settings (the reasons for each are there).
The payments app does not read this module (``create_app`` calls ``config_for``), so a merchant's own
``celeryconfig.py`` on the path cannot replace ours."""
from worker.broker.celeryconfig import config_for
from worker.config import get_settings

globals().update(config_for(get_settings()))
