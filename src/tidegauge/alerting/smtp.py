"""Email receiver over SMTP (standard library ``smtplib``; no extra needed)."""

from __future__ import annotations

import json
import logging
import smtplib
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any

from tidegauge.alerting.notifiers import summary
from tidegauge.errors import ConnectorError

__all__ = ["EmailNotifier"]

logger = logging.getLogger(__name__)


class EmailNotifier:
    """Sends one mail per notification: a one-line subject, a text body per alert, the JSON payload attached."""

    def __init__(
        self, name: str, *, host: str, port: int, sender: str, to: Sequence[str], starttls: bool = False,
        send_resolved: bool = True, timeout: float = 10.0,
    ) -> None:
        if not to:
            raise ValueError(f"email receiver {name!r}: give at least one recipient in `to`")
        self.name = name
        self.host = host
        self.port = port
        self.sender = sender
        self.to = list(to)
        self.starttls = starttls
        self.send_resolved = send_resolved
        self.timeout = timeout

    def message(self, payload: Mapping[str, Any]) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"tidegauge {summary(payload)}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        lines = []
        for a in payload.get("alerts", []):
            labels = " ".join(f"{k}={v}" for k, v in a["labels"].items())
            text = a["annotations"].get("summary", "")
            lines.append(f"[{a['status']}] {labels} since {a['startsAt']} {text}".rstrip())
        msg.set_content("\n".join(lines) + "\n")
        msg.add_attachment(json.dumps(payload, indent=2).encode(), maintype="application", subtype="json",
                           filename="alerts.json")
        return msg

    def send(self, payload: Mapping[str, Any]) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls()
                smtp.send_message(self.message(payload))
        except (smtplib.SMTPException, OSError) as exc:
            raise ConnectorError(f"email {self.name} ({self.host}:{self.port}): {exc}") from exc
