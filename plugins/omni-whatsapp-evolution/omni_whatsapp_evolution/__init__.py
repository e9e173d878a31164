"""Omni Hub channel plugin: WhatsApp through a self-hosted Evolution API server.

The hook implementations live in :mod:`omni_whatsapp_evolution.plugin` (the ``omni.plugins`` entry point);
:mod:`.normalize` and :mod:`.wire` hold the pure payload logic, :mod:`.client` the REST calls.
"""

__version__ = "0.1.0"
