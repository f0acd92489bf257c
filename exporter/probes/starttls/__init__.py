"""STARTTLS dialogues, one module per protocol; ``NEGOTIATORS`` maps each ``protocol:`` value to one.

See docs/starttls.md for what each dialogue sends, expects, and which answer maps to which reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from exporter.probes.starttls.base import Negotiator, StartTLSError
from exporter.probes.starttls.ftp import FTPNegotiator
from exporter.probes.starttls.imap import IMAPNegotiator
from exporter.probes.starttls.ldap import LDAPNegotiator
from exporter.probes.starttls.mysql import MySQLNegotiator
from exporter.probes.starttls.pop3 import POP3Negotiator
from exporter.probes.starttls.postgres import PostgresNegotiator
from exporter.probes.starttls.smtp import SMTPNegotiator
from exporter.probes.starttls.xmpp import XMPPNegotiator

NEGOTIATORS: Mapping[str, Negotiator] = {
    "smtp": SMTPNegotiator("EHLO"),
    "lmtp": SMTPNegotiator("LHLO"),
    "imap": IMAPNegotiator(),
    "pop3": POP3Negotiator(),
    "ftp": FTPNegotiator(),
    "ldap": LDAPNegotiator(),
    "postgres": PostgresNegotiator(),
    "mysql": MySQLNegotiator(),
    "xmpp": XMPPNegotiator("jabber:client"),
    "xmpp-server": XMPPNegotiator("jabber:server"),
}

__all__ = ["NEGOTIATORS", "Negotiator", "StartTLSError"]
