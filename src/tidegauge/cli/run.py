"""Placeholder: the `run` command is registered here."""

from __future__ import annotations
