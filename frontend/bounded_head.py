"""uvicorn's httptools protocol with the request head bounded. nginx bounds it in front of the
frontends (its header buffers); with `reuse_port: true` clients reach a frontend directly, and
httptools alone buffers a request line or header of any size before the app sees it."""
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from frontend.http import error_body

MAX_HEAD_BYTES = 64 * 1024  # the request line and headers together; nginx's defaults allow 32 KiB
# After the 431, what the client still sends is read and dropped this long before the connection
# closes (nginx's lingering close): closing with unread data sends a reset, which can reach the
# client before the answer does and take it away.
LINGER_S = 2.0


class BoundedHeadProtocol(HttpToolsProtocol):
    in_head = False
    head_bytes = 0
    refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        super().data_received(data)
        if self.in_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.refuse_head()

    def refuse_head(self) -> None:
        message = f"the request line and headers are over {MAX_HEAD_BYTES // 1024} KiB"
        body = json.dumps(error_body(431, message, None)).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.refused = True
        self.loop.call_later(LINGER_S, self.transport.close)
