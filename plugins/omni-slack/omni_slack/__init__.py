"""Omni Hub channel plugin: Slack (Events API over HTTP in, Web API through slack_sdk out).

The hook implementations live in :mod:`omni_slack.plugin` (the ``omni.plugins`` entry point);
:mod:`.normalize`, :mod:`.signature` and :mod:`.wire` hold the pure logic, :mod:`.client` the Web API
calls and :mod:`.routes` the webhook handlers.
"""

__version__ = "0.1.0"
