"""Placeholder: the `checkpoint` command is registered here."""

from __future__ import annotations
