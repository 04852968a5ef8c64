"""A phone joins with an invite and browses through the exit (issue 11), end to end:

- `tetherctl run` in the `exit` namespace serves the device and the API on its `inet`-side
  address with `--api-self-service invite` (so nothing but the invite lets a stranger in);
- `tetherctl invite create` (another process, while the daemon runs) prints the join URL;
- headless Chromium in the `inet` namespace (the phone's browser, out on the Internet) opens it,
  makes the key pair (over plain HTTP to a non-loopback address there is no secure context, so
  the vendored tweetnacl does it, as on a phone reaching a bare IP address), and shows the
  config; zbarimg reads its QR code back;
- a stock wireguard-go client in the `client` namespace comes up with exactly that config and
  fetches a file from the `inet` namespace through our exit;
- the private key is in no file of the config directory and no log; a second visit gets no
  config; the page asked no other origin for anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether import keys

from .netlab import require, wait_for
from .topology import INET4, Topology

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
API = "198.18.2.1:9090"  # the exit's address on the inet link: where phones reach the API
CLIENT_SIDE = "198.18.10.1"  # the exit's address on client 0's link: the tunnel's Endpoint
WG_KEYS = {"privatekey", "listenport", "fwmark", "publickey", "presharedkey", "allowedips",
           "endpoint", "persistentkeepalive"}  # fmt: skip


def wg_setconf_text(config: str) -> tuple[str, list[str]]:
    """`wg-quick strip`: the lines `wg setconf` takes, and the interface's addresses."""
    lines, addresses = [], []
    for line in config.splitlines():
        key, _, value = line.partition("=")
        name = key.strip().lower()
        if line.startswith("[") or name in WG_KEYS:
            lines.append(line)
        elif name == "address":
            addresses += [a.strip() for a in value.split(",")]
    return "\n".join(lines) + "\n", addresses


def tetherctl(*args: str, config_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHERCTL_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "tether", *args, "--config-dir", str(config_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_a_phone_joins_with_an_invite_and_browses_through_the_exit(lab, join_browser, tmp_path):
    require("wireguard-go", "wg", "curl", "zbarimg", "chromium", "chromedriver")
    payload = os.urandom(4096).hex().encode()
    topo = Topology(
        lab,
        tmp_path,
        clients=0,
        http_files={"hello.txt": payload},
        daemon_args=(
            "--api-listen",
            API,
            "--api-self-service",
            "invite",
            "--api-public-url",
            f"http://{API}",
            "--public-ipv4",
            CLIENT_SIDE,
        ),
    )
    wait_for(lambda: "peer API listening" in topo.log.read_text(), 20, "the API")

    made = tetherctl(
        "invite", "create", topo.dev, "--api-public-url", f"http://{API}",
        "--public-ipv4", CLIENT_SIDE, config_dir=topo.config_dir,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    url = made.stdout.splitlines()[0]
    assert url.startswith(f"http://{API}/join/")
    code = url.rsplit("/", 1)[1]

    result = join_browser(url, tmp_path, "--revisit", prefix=("ip", "netns", "exec", topo.inet_ns))
    config = result["config"]
    assert result["keygen"] == "tweetnacl"  # plain HTTP to a public address: no WebCrypto
    assert result["qr"] == config and result["download"] == config
    assert result["elsewhere"] == [] and result["console"] == []
    private = config.split("PrivateKey = ")[1].split("\n")[0]
    assert keys.pubkey(private) == result["public_key"]
    assert f"Endpoint = {CLIENT_SIDE}:51820" in config
    revisit = result["revisit"]
    assert revisit["status"] == 410 and revisit["config"] == "" and not revisit["create_visible"]

    # the stock client with exactly that config reaches the "Internet" through our exit
    conf, addresses = wg_setconf_text(config)
    topo.add_client(0, conf, addresses, {"priv": private, "pub": result["public_key"]})
    out = topo.client_sh(
        "curl", "-sS", "--max-time", "30", f"http://{INET4}:8080/hello.txt", timeout=40
    )
    assert out.returncode == 0 and out.stdout.encode() == payload, out.stderr

    # the private key reached no file and no log of the server; neither did the code
    listed = tetherctl("invite", "list", topo.dev, config_dir=topo.config_dir)
    assert listed.returncode == 0 and " 1/1 " in listed.stdout and "used up" in listed.stdout
    for path in [*topo.config_dir.iterdir(), topo.log, tmp_path / "inet.log"]:
        text = path.read_text(errors="replace")
        assert private not in text and code not in text, path
