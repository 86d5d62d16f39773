"""Placeholder: the `eval` command is registered here."""

from __future__ import annotations
