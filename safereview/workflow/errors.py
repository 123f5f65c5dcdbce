"""Exceptions of the review workflow; messages are safe to show to the person who acted."""

from __future__ import annotations


class WorkflowError(Exception):
    """Base class: every message is user-safe (no internals, no other users' data)."""


class AuthError(WorkflowError):
    """Sign-in failed: wrong credentials, disabled account or too many attempts."""


class Forbidden(WorkflowError):
    """The signed-in user's role does not allow the action (checked server-side)."""


class NotFound(WorkflowError, LookupError):
    """The object does not exist, or it is not the caller's to see."""


class InvalidInput(WorkflowError, ValueError):
    """Labels, usernames or other input fail validation; the message names the field."""


class Conflict(WorkflowError):
    """Optimistic concurrency: the row changed since the caller read it (reload and retry)."""


class LeaseLost(Conflict):
    """The assignment is no longer the caller's active lease (expired, released or skipped)."""
