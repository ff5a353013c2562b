"""Preloaded by the local executor's forkserver: the kernel kills the forkserver with the node.

Importing this module calls :func:`node.jobs.executors.die_with_parent` in the importing
process. The local executor starts its forkserver from the node's main thread with this
module as a preload, so a SIGKILLed node takes its forkserver along, and the pool workers
(which set the same on themselves) follow their forkserver. Import it only in a process
that must not outlive its parent; the node itself never imports it.
"""

from __future__ import annotations

from node.jobs.executors import die_with_parent

__all__: list[str] = []

die_with_parent()
