"""Placeholder: the `simulate` command is registered here."""

from __future__ import annotations
