"""The node's status web pages at ``/ui`` (dashboard, studies, series, jobs, routes, outbox)."""

from node.ui.app import PREFIX, StatusPages, create_ui, mount_ui

__all__ = ["PREFIX", "StatusPages", "create_ui", "mount_ui"]
