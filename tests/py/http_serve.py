"""One request handler served over HTTP, or HTTPS given a certificate, for the tests' Python
servers (mta_sts_server.py, webhook_receiver.py)."""
import ssl
from http.server import ThreadingHTTPServer


def serve(listen, handler, cert=None, key=None):
    """Listen on IP:PORT (HTTPS with `cert` and `key`), print "ready", serve for ever."""
    ip, port = listen.rsplit(":", 1)
    server = ThreadingHTTPServer((ip, int(port)), handler)
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
