"""A fleet of exits (DESIGN.md §7): several hosts serve one device and share its peers, address
allocations, owners and invites through etcd.

`etcd` talks to etcd, `layout` names the keys and checks their values, `mirror` keeps what the
watch reports, `device` commits changes as serialized transactions, `registry` and `service` are
the API's state and peer operations on top, and `render` writes the fleet's peers into a host's
device file. The watcher that runs all this beside the daemon is `tether.appliance.fleet`.
"""
