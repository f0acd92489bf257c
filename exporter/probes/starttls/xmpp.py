"""XMPP (RFC 6120 section 5): stream header, stream features, ``<starttls/>``, ``<proceed/>``.

Sent: an XML stream header to the domain (``hello_name`` or the host) in namespace ``jabber:client``
(``xmpp``) or ``jabber:server`` (``xmpp-server``), then ``<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>``.
Expected: the server's stream header (version 1.0, same namespace), ``<stream:features>`` holding
``<starttls/>``, then ``<proceed/>``. ``<failure/>`` or a stream error is a refusal. XMPP forbids
DTDs, comments and processing instructions (RFC 6120 section 11.1); any ``<!`` is refused here, which
also shuts out entity-expansion tricks.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError, XMLPullParser
from xml.sax.saxutils import quoteattr

from exporter.config import StartTLSSettings
from exporter.probes.base import Reason
from exporter.probes.starttls.base import StartTLSError
from exporter.probes.starttls.wire import Dialogue, Wire, protocol_error

STREAMS_NS = "http://etherx.jabber.org/streams"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
STREAM_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-streams"
_STARTTLS = f"<starttls xmlns='{TLS_NS}'/>".encode()
_Event = tuple[str, Element | tuple[str, str]]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class _Stream:
    """The server's side of the XML stream, as parser events read from the wire."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self._parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end", "start-ns"))
        self._events: collections.deque[_Event] = collections.deque()
        self._tail = b""
        self.depth = 0

    async def next_event(self) -> _Event:
        while not self._events:
            data = await self._wire.read_some()
            if b"<!" in self._tail + data:
                raise protocol_error("server sent a DTD, comment or CDATA, which XMPP forbids")
            self._tail = data[-1:]
            try:
                self._parser.feed(data)
                self._events.extend(self._parser.read_events())  # type: ignore[arg-type]  # events we asked for
            except ParseError as exc:
                raise protocol_error(f"server sent malformed XML: {exc}") from exc
        event = self._events.popleft()
        self.depth += {"start": 1, "end": -1}.get(event[0], 0)
        return event

    @property
    def idle(self) -> bool:
        return not self._events

    async def header(self) -> tuple[Element, dict[str, str]]:
        """The server's <stream:stream> and the namespaces it declares."""
        namespaces: dict[str, str] = {}
        while True:
            kind, item = await self.next_event()
            if kind == "start-ns" and isinstance(item, tuple):
                namespaces[item[0]] = item[1]
            elif kind == "start" and isinstance(item, Element):
                if item.tag != f"{{{STREAMS_NS}}}stream":
                    raise protocol_error(f"expected a stream header, got <{_local(item.tag)}>")
                return item, namespaces

    async def element(self) -> Element:
        """The next complete top-level element (a child of the stream)."""
        current: Element | None = None
        while True:
            kind, item = await self.next_event()
            if kind == "start" and self.depth == 2 and isinstance(item, Element):
                current = item
            elif kind == "end" and self.depth == 1 and current is not None:
                return current
            elif kind == "end" and self.depth == 0:
                raise StartTLSError(Reason.STARTTLS_REFUSED, "server closed the XML stream")


def _stream_error(element: Element) -> StartTLSError:
    conditions = [_local(child.tag) for child in element if child.tag.startswith(f"{{{STREAM_ERROR_NS}}}")]
    return StartTLSError(Reason.STARTTLS_REFUSED, f"stream error: {', '.join(conditions) or 'unspecified'}")


@dataclass
class XMPPNegotiator(Dialogue):
    """XMPP STARTTLS on a client-to-server (``jabber:client``) or server-to-server stream."""

    namespace: str = "jabber:client"
    def header(self, domain: str) -> bytes:
        """The opening stream header the probe sends."""
        return (
            f"<?xml version='1.0'?><stream:stream xmlns='{self.namespace}' xmlns:stream='{STREAMS_NS}' "
            f"to={quoteattr(domain)} version='1.0'>"
        ).encode()

    async def dialogue(self, wire: Wire, settings: StartTLSSettings, host: str) -> None:
        """Open the stream, read features, request STARTTLS, expect <proceed/>."""
        stream = _Stream(wire)
        await wire.send(self.header(settings.hello_name or host))
        await self._check_header(stream)
        features = await stream.element()
        if features.tag == f"{{{STREAMS_NS}}}error":
            raise _stream_error(features)
        if features.tag != f"{{{STREAMS_NS}}}features":
            raise protocol_error(f"expected <stream:features>, got <{_local(features.tag)}>")
        if features.find(f"{{{TLS_NS}}}starttls") is None:
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, "<starttls/> not among the stream features")
        await wire.send(_STARTTLS)
        answer = await stream.element()
        if answer.tag == f"{{{TLS_NS}}}failure":
            raise StartTLSError(Reason.STARTTLS_REFUSED, "server answered <failure/>")
        if answer.tag == f"{{{STREAMS_NS}}}error":
            raise _stream_error(answer)
        if answer.tag != f"{{{TLS_NS}}}proceed":
            raise protocol_error(f"expected <proceed/>, got <{_local(answer.tag)}>")
        if not stream.idle:
            raise protocol_error("server sent XML after <proceed/>")
        wire.expect_drained("<proceed/>")

    async def _check_header(self, stream: _Stream) -> None:
        element, namespaces = await stream.header()
        if namespaces.get("", self.namespace) != self.namespace:
            raise protocol_error(f"stream namespace {namespaces['']!r}, expected {self.namespace!r}")
        version = element.get("version", "")
        if not version.startswith("1."):
            # Pre-1.0 streams (no version) have no stream features, hence no STARTTLS.
            raise StartTLSError(Reason.STARTTLS_UNSUPPORTED, f"stream version {version or 'missing'!r}")
