"""The download guard refuses non-public addresses, other schemes and stray files, before any connection.

Only loopback ever receives a packet: other ranges are tested on the classifier, and through a stub resolver whose
answers reach a stub socket factory that fails the test instead of connecting.
"""
import ipaddress
import socket
import urllib.error
from pathlib import Path

import pandas as pd
import pytest

from pipeline.download import run as download_run
from pipeline.download.guard import REFUSED, Policy, opener, refusal
from pipeline.params import ParamsError, parse_params
from pipeline.params.download import DownloadParams
from tests.conftest import Routes, serve
from tests.pipeline.download.test_run import _encode, _photo

REFUSED_ADDRESSES = [
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.0.1", "private"), ("100.64.0.1", "shared"), ("100.127.255.254", "shared"),
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.0.8", "reserved"), ("192.0.2.1", "reserved"),
    ("198.18.0.1", "reserved"), ("198.51.100.1", "reserved"), ("203.0.113.1", "reserved"),
    ("192.88.99.1", "reserved"),
    ("::", "unspecified"), ("::1", "loopback"), ("fe80::1", "link-local"), ("fe80::1%1", "link-local"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"), ("fec0::1", "private"), ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"), ("2001:db8::1", "reserved"), ("100::1", "reserved"), ("64:ff9b:1::1", "private"),
    ("2001::1", "reserved"),  # Teredo
    # IPv4 inside IPv6: mapped, compatible, NAT64, 6to4
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.0.0.1", "private"),
    ("::ffff:0.0.0.0", "unspecified"), ("::127.0.0.1", "loopback"), ("::a9fe:a9fe", "link-local"),
    ("64:ff9b::a9fe:a9fe", "link-local"), ("64:ff9b::7f00:1", "loopback"), ("2002:a9fe:a9fe::1", "link-local"),
    ("2002:c0a8:1::1", "private"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
          "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address, why", REFUSED_ADDRESSES)
def test_every_refused_range(address, why):
    assert why in refusal(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert refusal(address) is None


def test_opened_networks():
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    assert refusal("127.0.0.1", loopback) is None
    assert refusal("::ffff:127.0.0.1", loopback) is None  # the IPv4 address it carries is opened
    assert "loopback" in refusal("::1", loopback)
    assert "private" in refusal("10.0.0.1", loopback)


class Intercepted(Exception):
    """Raised by the stub socket factory: the guard let a connection through (not an OSError: nothing catches it)."""


def _stub_resolver(answers: dict[str, list[str]]):
    """getaddrinfo with `answers` for names; an IP literal (any spelling) is parsed, never looked up."""
    def resolve(host, port, family=0, type_=0):
        if host in answers:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in answers[host]]
        return socket.getaddrinfo(host, port, family, type_, 0, socket.AI_NUMERICHOST)
    return resolve


def _no_connection(address, timeout, source_address=None):
    raise Intercepted(address)


ANSWERS = {"metadata.test": ["169.254.169.254"], "intranet.test": ["10.1.2.3"], "cgnat.test": ["100.64.1.1"],
           "mapped.test": ["::ffff:192.168.1.1"], "v6.test": ["fd00::5", "fe80::5"], "multi.test": ["224.0.0.251"],
           "public.test": ["8.8.8.8"]}


@pytest.mark.parametrize("url", [
    "http://metadata.test/latest/meta-data/", "https://intranet.test/a.jpg", "http://cgnat.test/a.jpg",
    "http://mapped.test/a.jpg", "https://v6.test/a.jpg", "http://multi.test/a.jpg",
    "http://2130706433/a.jpg", "http://0x7f000001/a.jpg", "http://0177.0.0.1/a.jpg", "http://127.1/a.jpg",
    "http://[::1]/a.jpg", "http://[::ffff:7f00:1]/a.jpg", "http://0.0.0.0/a.jpg",
])
def test_resolved_answers_are_refused_before_any_connection(tmp_path, url):
    guarded = opener(Policy.from_params(tmp_path, [], []), resolve=_stub_resolver(ANSWERS),
                     open_socket=_no_connection)
    with pytest.raises(urllib.error.URLError, match=REFUSED):
        guarded.open(url, timeout=1)


def test_a_public_answer_is_connected_to_by_address(tmp_path):
    """The socket is made to the checked address itself, not to the name (no second lookup)."""
    guarded = opener(Policy.from_params(tmp_path, [], []), resolve=_stub_resolver(ANSWERS),
                     open_socket=_no_connection)
    with pytest.raises(Intercepted) as connected:
        guarded.open("http://public.test:8080/a.jpg", timeout=1)
    assert connected.value.args[0] == ("8.8.8.8", 8080)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.jpg", "data:image/png;base64,iVBORw0KGgo=",
                                 "gopher://127.0.0.1/a", "file://intranet.test/etc/passwd", "file:/etc/passwd",
                                 "file:///etc/passwd", "file:data/toyworld/../../x.png"])
def test_other_schemes_and_files_are_refused(tmp_path, url):
    guarded = opener(Policy.from_params(tmp_path, ["127.0.0.0/8"], []), resolve=_stub_resolver(ANSWERS),
                     open_socket=_no_connection)
    with pytest.raises(OSError, match=REFUSED):
        guarded.open(url, timeout=1)


def test_a_redirect_is_checked_at_every_hop(tmp_path):
    """127.0.0.1 is opened, and redirects to names that resolve to private addresses: the second hop is refused."""
    routes = Routes()
    routes["/to-metadata"] = (302, "text/plain", b"http://metadata.test/latest/", 0)
    routes["/to-intranet"] = (301, "text/plain", b"https://intranet.test/a.jpg", 0)
    guarded = opener(Policy.from_params(tmp_path, ["127.0.0.1/32"], []), resolve=_stub_resolver(ANSWERS),
                     open_socket=lambda address, *a: (socket.create_connection(address, *a)
                                                      if address[0] == "127.0.0.1" else _no_connection(address)))
    with serve(routes) as port:
        for path in ("/to-metadata", "/to-intranet"):
            with pytest.raises(urllib.error.URLError, match=REFUSED):
                guarded.open(f"http://127.0.0.1:{port}{path}", timeout=5)
    assert routes.seen == ["/to-metadata", "/to-intranet"]


def _download(tmp_path, urls: list[str], name: str, **opened) -> tuple[dict, pd.DataFrame]:
    path = tmp_path / f"{name}.parquet"
    pd.DataFrame({"url": urls, "uid": [f"u{i}" for i in range(len(urls))],
                  "alt_text": ["x"] * len(urls)}).to_parquet(path, index=False)
    params = DownloadParams(image_size=32, timeout=5, processes_count=1, thread_count=2, **opened)
    summary = download_run.run(params, path, tmp_path / name, root=tmp_path / "repo",
                               toy_world=Path("data/toyworld"))
    records = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / name).glob("*.parquet")))
    return summary, records


@pytest.mark.expensive
def test_loopback_and_stray_files_refused_unless_opened(tmp_path):
    """Real img2dataset, real loopback servers: every spelling of loopback, a redirect to loopback and a file outside
    the allowed roots are refused with class `refused` and no server sees a request; the opening params download
    them all."""
    (tmp_path / "repo" / "data" / "toyworld").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    _photo().save(tmp_path / "outside" / "a.png")
    _photo().save(tmp_path / "repo" / "data" / "toyworld" / "t.png")
    routes, second = Routes(), Routes()
    routes["/a.jpg"] = second["/a.jpg"] = (200, "image/jpeg", _encode(_photo(), "JPEG"), 0)
    with serve(routes) as port, serve(routes, "::1") as port6, serve(second, "127.0.0.2") as port2:
        routes["/redirect"] = (302, "text/plain", f"http://127.0.0.2:{port2}/a.jpg".encode(), 0)
        urls = [f"http://127.0.0.1:{port}/a.jpg", f"http://localhost:{port}/a.jpg", f"http://[::1]:{port6}/a.jpg",
                f"http://2130706433:{port}/a.jpg", f"http://127.0.0.1:{port}/redirect",
                (tmp_path / "outside" / "a.png").as_uri()]
        summary, records = _download(tmp_path, urls + ["file:data/toyworld/t.png"], "default")
        assert summary["failures"] == {"refused": len(urls)} and summary["success"] == 1
        assert records.set_index("url").loc[urls, "error_message"].str.contains(REFUSED).all()
        assert routes.seen == [] and second.seen == []

        # 127.0.0.1 only: the redirect's first hop is allowed, its target (127.0.0.2) is not
        summary, records = _download(tmp_path, [f"http://127.0.0.1:{port}/redirect"], "one_host",
                                     allow_networks=["127.0.0.1/32"])
        assert summary["failures"] == {"refused": 1} and "127.0.0.2 is loopback" in records["error_message"][0]
        assert routes.seen == ["/redirect"] and second.seen == []

        summary, records = _download(tmp_path, urls, "opened", allow_networks=["127.0.0.0/8", "::1/128"],
                                     allow_file_roots=[str(tmp_path / "outside")])
        assert summary["success"] == len(urls) and summary["failures"] == {}, records["error_message"].tolist()
        assert second.seen == ["/a.jpg"]


def test_opening_params_are_checked():
    with pytest.raises(ParamsError, match=r"download.allow_networks: not a network .*'10.0.0.1/8'"):
        parse_params({"download": {"allow_networks": ["10.0.0.1/8"]}})
    assert parse_params({"download": {"allow_networks": ["10.0.0.0/8", "fd00::/8"]}}).download.allow_networks
