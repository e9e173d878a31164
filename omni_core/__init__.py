"""Omni Hub core: the public API plugins may import.

Plugins import only from this module (and the modules it re-exports from).
"""

from omni_core.entities import Instance, Tenant, redact, strip_secrets
from omni_core.errors import ApiError, ExternalError, PermanentError, TransientError, classify_status, parse_retry_after
from omni_core.hookspecs import hookimpl
from omni_core.hub import Hub, IngestResult, RouteContext, session_id_for
from omni_core.ids import new_id
from omni_core.lifecycle import InstanceInfo, QrCode
from omni_core.model import (
    AgentReply,
    Chat,
    Content,
    DeliveryReceipt,
    Ignored,
    InstanceUpdate,
    Media,
    Message,
    MessageChange,
    NormalizedEvent,
    OutboundPart,
    Sender,
    StatusUpdate,
    iso,
    utcnow,
)
from omni_core.webhook_route import WebhookRequest, WebhookRoute, webhook_route

__version__ = "0.1.0"

__all__ = [
    "AgentReply",
    "ApiError",
    "Chat",
    "Content",
    "DeliveryReceipt",
    "ExternalError",
    "Hub",
    "Ignored",
    "IngestResult",
    "Instance",
    "InstanceInfo",
    "InstanceUpdate",
    "Media",
    "Message",
    "MessageChange",
    "NormalizedEvent",
    "OutboundPart",
    "PermanentError",
    "QrCode",
    "RouteContext",
    "Sender",
    "StatusUpdate",
    "Tenant",
    "TransientError",
    "WebhookRequest",
    "WebhookRoute",
    "classify_status",
    "hookimpl",
    "iso",
    "new_id",
    "parse_retry_after",
    "redact",
    "session_id_for",
    "strip_secrets",
    "utcnow",
    "webhook_route",
]
