"""Actions: the small adapters that touch the world (ansible-runner, HTTP, approvals).

They know nothing of the engine: each takes what to do (a batch's units and steps, a URL, an
approval request) and returns outcomes. The engine decides what runs and journals it.
"""
