<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<title>{{title}}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{{root}}static/join.css">
% if ready:
<script src="{{root}}static/vendor/nacl.min.js" defer></script>
<script src="{{root}}static/vendor/qrcode.js" defer></script>
% end
<script src="{{root}}static/join.js" defer></script>
</head>
<body>
<main id="join" data-state="{{state}}" data-device="{{device}}" data-add="{{add}}" data-remove="{{remove}}">
<h1>{{title}}</h1>
% if ready:
<p>This page makes a WireGuard key pair <strong>inside your browser</strong>, registers only
its public key with the server, and gives you a complete configuration for the WireGuard app.
Your private key never leaves this device.</p>
<noscript><p class="notice">This page needs JavaScript: it makes your key pair in the browser,
so that the server never sees your private key. Turn JavaScript on and reload the page.</p></noscript>
<p><button id="create" type="button" hidden>Create my WireGuard configuration</button></p>
<p id="status" role="status" aria-live="polite"></p>
<section id="result" hidden>
<h2>1. Scan it with the WireGuard app</h2>
<p><img id="qr" alt="QR code of your WireGuard configuration"></p>
<p>On a phone: install the WireGuard app, tap <b>+</b> and choose <b>Scan from QR code</b>
(on this same phone, use the download below and <b>Import from file</b> instead).</p>
<h2>2. Or download the file</h2>
<p><a id="download" href="#" download="{{device}}.conf">Download {{device}}.conf</a>
for the WireGuard app on a computer (<b>Import tunnel(s) from file</b>) or <code>wg-quick</code>.</p>
<h2>3. Your configuration</h2>
<pre id="config"></pre>
<p class="hint">It holds your private key: keep it to yourself. This page does not keep
it; once you close the page, the WireGuard app (or the file you downloaded) is where it lives.</p>
<p><button id="remove" type="button" class="danger">Remove this device from the VPN</button></p>
</section>
% else:
<p class="notice" id="message">{{message}}</p>
% end
<section id="mine" hidden>
<h2>Devices this browser added here</h2>
<ul id="mine-list"></ul>
</section>
</main>
</body>
</html>
