/* The join page's script (served by tetherctl; see tether/api/join/page.py).
 *
 * It makes the WireGuard key pair here, in the browser: WebCrypto's X25519 where the browser has
 * it (a secure context: HTTPS or loopback), else the vendored tweetnacl (nacl.scalarMult.base)
 * with random bytes from crypto.getRandomValues. Only the public key is sent (POST to the URL in
 * data-add); the server answers with the client config, its PrivateKey line a placeholder, and
 * the new peer's owner secret in the Tether-Peer-Secret header. The page puts the private key
 * into the config and shows it as text (#config), as a QR code drawn here (#qr) and as a
 * download (#download).
 *
 * Kept in localStorage, under "tetherctl/<device>/<public key>": the owner secret only, so that
 * this browser can remove the device later ("Remove this device"). The private key is never
 * stored: the WireGuard app (or the downloaded file) holds it once imported, and a key left in
 * browser storage could be read by anyone with this browser profile long after it is needed.
 */
(function () {
  "use strict";

  var main = document.getElementById("join");
  if (!main) {
    return;
  }
  var device = main.getAttribute("data-device");
  var addUrl = main.getAttribute("data-add");
  var removeUrl = main.getAttribute("data-remove");
  var storePrefix = "tetherctl/" + device + "/";
  var objectUrl = null;

  function byId(id) {
    return document.getElementById(id);
  }

  function say(text) {
    var status = byId("status");
    if (status) {
      status.textContent = text;
    }
  }

  function toBase64(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i += 1) {
      s += String.fromCharCode(bytes[i]);
    }
    return btoa(s);
  }

  function fromBase64Url(text) {
    var s = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4));
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i += 1) {
      out[i] = s.charCodeAt(i);
    }
    return out;
  }

  function clamp(key) {
    // as `wg genkey` prints keys; X25519 clamps anyway, so the public key is the same
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    return key;
  }

  function storage() {
    try {
      return window.localStorage || null;
    } catch (e) {
      return null; // storage disabled: the page works, only "remove later" does not
    }
  }

  async function webCryptoPair() {
    var subtle = window.crypto && window.crypto.subtle;
    if (!subtle) {
      return null;
    }
    try {
      var pair = await subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
      var pub = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
      var jwk = await subtle.exportKey("jwk", pair.privateKey);
      var priv = fromBase64Url(jwk.d);
      if (pub.length !== 32 || priv.length !== 32) {
        return null;
      }
      return { priv: clamp(priv), pub: pub, how: "webcrypto" };
    } catch (e) {
      return null; // this browser's WebCrypto has no X25519
    }
  }

  function naclPair() {
    if (!window.nacl || !window.nacl.scalarMult) {
      throw new Error("no X25519 implementation could be loaded");
    }
    var priv = clamp(window.nacl.randomBytes(32));
    return { priv: priv, pub: window.nacl.scalarMult.base(priv), how: "tweetnacl" };
  }

  async function makeKeyPair() {
    return (await webCryptoPair()) || naclPair();
  }

  function qrDataUrl(text) {
    var bytes = new TextEncoder().encode(text);
    var binary = "";
    for (var i = 0; i < bytes.length; i += 1) {
      binary += String.fromCharCode(bytes[i]);
    }
    var qr = window.qrcode(0, "M");
    qr.addData(binary, "Byte");
    qr.make();
    var n = qr.getModuleCount();
    var quiet = 4;
    var scale = Math.max(3, Math.floor(640 / (n + 2 * quiet)));
    var size = (n + 2 * quiet) * scale;
    var canvas = document.createElement("canvas");
    canvas.width = size;
    canvas.height = size;
    var g = canvas.getContext("2d");
    g.fillStyle = "#fff";
    g.fillRect(0, 0, size, size);
    g.fillStyle = "#000";
    for (var r = 0; r < n; r += 1) {
      for (var c = 0; c < n; c += 1) {
        if (qr.isDark(r, c)) {
          g.fillRect((c + quiet) * scale, (r + quiet) * scale, scale, scale);
        }
      }
    }
    return canvas.toDataURL("image/png");
  }

  function showConfig(config) {
    byId("config").textContent = config;
    byId("qr").src = qrDataUrl(config);
    if (objectUrl) {
      URL.revokeObjectURL(objectUrl);
    }
    objectUrl = URL.createObjectURL(new Blob([config], { type: "application/octet-stream" }));
    var link = byId("download");
    link.href = objectUrl;
    link.setAttribute("download", device + ".conf");
    byId("result").hidden = false;
  }

  function forgetConfig() {
    byId("config").textContent = "";
    byId("qr").removeAttribute("src");
    if (objectUrl) {
      URL.revokeObjectURL(objectUrl);
      objectUrl = null;
    }
    byId("download").setAttribute("href", "#");
    byId("result").hidden = true;
  }

  async function join() {
    var button = byId("create");
    button.disabled = true;
    say("Making your key pair…");
    try {
      var keys = await makeKeyPair();
      main.setAttribute("data-keygen", keys.how);
      var pub = toBase64(keys.pub);
      say("Registering your public key…");
      var response = await fetch(addUrl + "/" + pub, {
        method: "POST",
        credentials: "omit",
        cache: "no-store",
      });
      var body = await response.text();
      if (!response.ok) {
        say(body.trim() || "The server refused (" + response.status + ").");
        button.disabled = response.status !== 429 && response.status >= 400 && response.status < 500;
        return;
      }
      var secret = response.headers.get("Tether-Peer-Secret");
      var store = storage();
      if (secret && store) {
        store.setItem(storePrefix + pub, secret);
      }
      var config = body.replace(/^PrivateKey = .*$/m, "PrivateKey = " + toBase64(keys.priv));
      keys.priv.fill(0);
      main.setAttribute("data-public-key", pub);
      button.hidden = true;
      say("Done. Your key pair was made in this browser; the server has only the public key.");
      showConfig(config);
      listMine();
    } catch (e) {
      say("Something went wrong: " + e.message);
      button.disabled = false;
    }
  }

  async function removeDevice(pub) {
    var store = storage();
    var secret = store && store.getItem(storePrefix + pub);
    if (!secret) {
      say("This browser no longer has the secret that removes that device.");
      return;
    }
    var response = await fetch(removeUrl + "/" + pub, {
      method: "DELETE",
      credentials: "omit",
      cache: "no-store",
      headers: { Authorization: "Bearer " + secret },
    });
    var body = (await response.text()).trim();
    if (response.ok) {
      store.removeItem(storePrefix + pub);
      if (main.getAttribute("data-public-key") === pub) {
        forgetConfig();
      }
      say("Removed: that device can no longer connect. (" + body + ")");
    } else {
      say("Not removed: " + (body || response.status));
    }
    listMine();
  }

  function confirmingButton(label, action) {
    // two taps instead of a dialog: the first arms the button, the second acts
    var button = document.createElement("button");
    button.type = "button";
    button.className = "danger";
    button.textContent = label;
    button.addEventListener("click", function () {
      if (button.getAttribute("data-armed") !== "1") {
        button.setAttribute("data-armed", "1");
        button.textContent = "Tap again to remove";
        return;
      }
      button.disabled = true;
      action().finally(function () {
        button.disabled = false;
      });
    });
    return button;
  }

  function listMine() {
    var store = storage();
    var list = byId("mine-list");
    var section = byId("mine");
    if (!store || !list || !section) {
      return;
    }
    list.textContent = "";
    var current = main.getAttribute("data-public-key");
    var count = 0;
    for (var i = 0; i < store.length; i += 1) {
      var name = store.key(i);
      if (!name || name.indexOf(storePrefix) !== 0) {
        continue;
      }
      var pub = name.slice(storePrefix.length);
      if (pub === current) {
        continue; // the "Remove this device" button above is for this one
      }
      var item = document.createElement("li");
      item.textContent = pub;
      item.appendChild(confirmingButton("Remove", removeDevice.bind(null, pub)));
      list.appendChild(item);
      count += 1;
    }
    section.hidden = count === 0;
  }

  var create = byId("create");
  if (create) {
    create.hidden = false;
    create.addEventListener("click", join);
  }
  var remove = byId("remove");
  if (remove) {
    var replacement = confirmingButton(remove.textContent, function () {
      return removeDevice(main.getAttribute("data-public-key"));
    });
    replacement.id = "remove";
    remove.replaceWith(replacement);
  }
  listMine();
})();
