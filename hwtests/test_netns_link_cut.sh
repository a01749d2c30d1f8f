#!/usr/bin/env bash
# Two sites in two network namespaces joined by a veth pair (192.0.2.0/24,
# documentation addresses that exist only inside these namespaces). Pair,
# link up, cut the wire, the link is declared down after peer_timeout,
# restore the wire, the link comes back by itself.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ns_a=drgw-a-$$ ns_b=drgw-b-$$
veth_sites "$ns_a" "$ns_b" "va$$" "vb$$"

write_config site-a 192.0.2.1 9443
write_config site-b 192.0.2.2 9443
start_daemon site-a "$ns_a"
start_daemon site-b "$ns_b"
drgw_cli site-a pair add --name site-b --address 192.0.2.2:9443 --fingerprint "$(fingerprint site-b)"
drgw_cli site-b pair add --name site-a --address 192.0.2.1:9443 --fingerprint "$(fingerprint site-a)"
wait_until 20 "link up on site-a" link_is site-a site-b connected
wait_until 20 "link up on site-b" link_is site-b site-a connected
echo "link up across the namespaces"

ip -n "$ns_a" link set "va$$" down
cut_at=$SECONDS
wait_until 10 "site-a declares the link down" link_is_not site-a site-b connected
wait_until 10 "site-b declares the link down" link_is_not site-b site-a connected
echo "link declared down $((SECONDS - cut_at))s after the cut"
grep -q "silent for" "$work/site-b/drgw.log" "$work/site-a/drgw.log" || fail "no 'silent' reason logged"

ip -n "$ns_a" link set "va$$" up
wait_until 30 "link back up on site-a" link_is site-a site-b connected
wait_until 30 "link back up on site-b" link_is site-b site-a connected
echo "link restored after the wire came back"
