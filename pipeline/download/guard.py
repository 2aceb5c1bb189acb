"""The download guard: a URL list is untrusted input (docs/pipeline.md, "Security").

img2dataset opens every URL with `urllib.request.urlopen`, which goes through the process's installed opener.
`opener(policy)` knows three schemes and refuses every other one:
- http(s): the host is resolved and each answer is classified before a socket exists; the socket is made to the
  checked address itself (no second lookup), so a name whose answer is private is refused like the address. A
  redirect is a new `open` through the same opener, so every hop is checked the same way.
- file: the path, symlinks resolved, must lie under an allowed root; a relative `file:` URL is relative to the
  repository (the toy world's URLs are), so the URL itself stays repo-relative in every record.
Refusals raise `Refused`, whose message starts with REFUSED (the stage's failure class `refused`); nothing is sent
to a refused address. Proxies from the environment are not used: the connection made is the one checked.
"""
import email.message
import ipaddress
import os
import socket
import urllib.error
import urllib.request
import urllib.response
from dataclasses import dataclass
from functools import partial
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path

REFUSED = "refused by the download guard"

_V4 = [(ipaddress.ip_network(net), why) for net, why in [
    ("0.0.0.0/8", "unspecified"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local (cloud metadata)"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"), ("192.0.2.0/24", "reserved"), ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"), ("198.18.0.0/15", "reserved"), ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
]]
_V6 = [(ipaddress.ip_network(net), why) for net, why in [
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("64:ff9b:1::/48", "private"), ("100::/64", "reserved"),
    ("2001:db8::/32", "reserved"), ("fc00::/7", "private"), ("fe80::/10", "link-local"),
    ("fec0::/10", "private"), ("ff00::/8", "multicast"),
]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(OSError):
    """The guard refused a URL; no connection was made."""

    def __init__(self, why: str):
        super().__init__(f"{REFUSED}: {why}")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries: mapped, compatible (::a.b.c.d), NAT64, 6to4 or Teredo."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if int(ip) >> 32 == 0 or ip in _NAT64:  # compatible (:: and ::1 are classified before) or NAT64
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo else None


def refusal(address: str, allow: tuple = ()) -> str | None:
    """Why a connection to `address` (an IP literal, as a resolver answers) is refused; None if it is not.
    `allow`: networks opened on purpose (an IPv6 address is also allowed by the IPv4 address it carries)."""
    ip = ipaddress.ip_address(address)
    v4 = embedded_ipv4(ip) if ip.version == 6 else None
    if any(ip in net for net in allow if net.version == ip.version) or \
            (v4 is not None and any(v4 in net for net in allow if net.version == 4)):
        return None
    for net, why in _V4 if ip.version == 4 else _V6:
        if ip in net:
            return f"{address} is {why}"
    if v4 is not None:
        inner = refusal(str(v4))
        if inner:
            return f"{address} carries {inner}"
    return None if ip.is_global else f"{address} is reserved"


@dataclass(frozen=True)
class Policy:
    """What a download may open beyond public http(s) addresses: `networks` (CIDR strings) and file `roots`
    (absolute paths); `repo` is the folder relative `file:` URLs are under."""

    repo: str
    networks: tuple[str, ...] = ()
    roots: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, repo: Path, networks: list[str], roots: list[str]) -> "Policy":
        repo = Path(repo).resolve()
        return cls(str(repo), tuple(networks), tuple(str((repo / root).resolve()) for root in roots))


class Guard:
    """Checks and makes the connections and file opens of one policy. `resolve` and `open_socket` are
    `socket.getaddrinfo` and `socket.create_connection` (tests pass stubs)."""

    def __init__(self, policy: Policy, resolve=socket.getaddrinfo, open_socket=socket.create_connection):
        self.policy, self.resolve, self.open_socket = policy, resolve, open_socket
        self.networks = tuple(ipaddress.ip_network(net) for net in policy.networks)

    def connect(self, address: tuple, timeout, source_address=None) -> socket.socket:
        """http.client's socket factory: resolve, refuse what is not allowed, connect to an allowed answer."""
        host, port = address
        refused, error = [], None
        for family, _, _, _, sockaddr in self.resolve(host, port, 0, socket.SOCK_STREAM):
            why = refusal(sockaddr[0], self.networks)
            if why:
                refused.append(why)
                continue
            try:
                return self.open_socket((sockaddr[0], port), timeout, source_address)
            except OSError as err:
                error = err
        if error is not None:
            raise error
        raise Refused(f"{host} -> {'; '.join(dict.fromkeys(refused)) or 'no address'} (download.allow_networks)")

    def open_file(self, req: urllib.request.Request) -> urllib.response.addinfourl:
        if req.host not in (None, "", "localhost"):
            raise Refused(f"{req.full_url}: a file URL on another host")
        path = Path(self.policy.repo) / urllib.request.url2pathname(req.selector)
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in self.policy.roots):
            raise Refused(f"{req.full_url}: {real} is outside the allowed roots (download.allow_file_roots)")
        try:
            stream = open(real, "rb")  # noqa: SIM115 (closed by the response)
        except OSError as err:
            raise urllib.error.URLError(err) from None
        return urllib.response.addinfourl(stream, email.message.Message(), req.full_url)


class _Checked:
    """An http.client connection whose socket comes from the guard (http.client's `_create_connection` hook)."""

    def __init__(self, *args, guard: Guard, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = guard.connect


class _HTTPConnection(_Checked, HTTPConnection):
    pass


class _HTTPSConnection(_Checked, HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: Guard):
        super().__init__()
        self.guard = guard

    def http_open(self, req):
        return self.do_open(partial(_HTTPConnection, guard=self.guard), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: Guard):
        super().__init__()
        self.guard = guard

    def https_open(self, req):
        return self.do_open(partial(_HTTPSConnection, guard=self.guard), req, context=self._context)


class _FileHandler(urllib.request.BaseHandler):
    def __init__(self, guard: Guard):
        self.guard = guard

    def file_open(self, req):
        return self.guard.open_file(req)


class _OtherSchemes(urllib.request.BaseHandler):
    def unknown_open(self, req):
        raise Refused(f"{req.full_url}: scheme {req.type!r} (only http, https and file under allowed roots)")


def opener(policy: Policy, **guard_hooks) -> urllib.request.OpenerDirector:
    """An opener that opens only what `policy` allows (install it with `urllib.request.install_opener`)."""
    guard = Guard(policy, **guard_hooks)
    director = urllib.request.OpenerDirector()
    for handler in (_HTTPHandler(guard), _HTTPSHandler(guard), _FileHandler(guard), _OtherSchemes(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        director.add_handler(handler)
    return director
