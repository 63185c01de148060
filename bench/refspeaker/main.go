// refspeaker: the reference "direct BGP speaker" of bench/peers.py. It embeds GoBGP's server package (the
// library gobgpd is built from), peers one router over numbered IPv4 without listening itself, and takes
// commands on stdin, one a line:
//
//	add 10.0.100.5/32   announce the prefix with this speaker's address as next hop
//	del 10.0.100.5/32   withdraw it
//
// and answers each on stdout with "ok add|del PREFIX NS", NS being the nanoseconds GoBGP's AddPath or
// DeletePath call took (the speaker's own share before the UPDATE is written), or "error ...". Peer state
// changes are printed as "peer ADDRESS STATE". No timers are configured: GoBGP sends an UPDATE as soon as
// the path is in its table (it has no MRAI and no process-queue hold).
//
// Built by bench/peers.py from the Go module proxy (GoBGP v3.37.0) into ~/.cache/l3lb-testenv.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

func main() {
	asn := flag.Uint("asn", 65199, "this speaker's AS number")
	routerID := flag.String("router-id", "", "BGP router-id (default: --local)")
	local := flag.String("local", "", "this speaker's IPv4 address on the link (the next hop it announces)")
	peer := flag.String("peer", "", "the router's IPv4 address")
	peerASN := flag.Uint("peer-asn", 65000, "the router's AS number")
	flag.Parse()
	if *local == "" || *peer == "" {
		fmt.Fprintln(os.Stderr, "usage: refspeaker --local A.B.C.D --peer A.B.C.D [--asn N] [--peer-asn N]")
		os.Exit(2)
	}
	if *routerID == "" {
		*routerID = *local
	}
	ctx := context.Background()
	out := make(chan string, 64)
	go func() {
		w := bufio.NewWriter(os.Stdout)
		for line := range out {
			w.WriteString(line + "\n")
			w.Flush()
		}
	}()

	s := server.NewBgpServer()
	go s.Serve()
	must(s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: uint32(*asn), RouterId: *routerID, ListenPort: -1, // connect out only: node FRR may own :179
	}}))
	must(s.WatchEvent(ctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}},
		func(r *api.WatchEventResponse) {
			if p := r.GetPeer(); p != nil && p.Type == api.WatchEventResponse_PeerEvent_STATE {
				out <- fmt.Sprintf("peer %s %s", p.Peer.State.NeighborAddress, p.Peer.State.SessionState)
			}
		}))
	must(s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: *peer, PeerAsn: uint32(*peerASN)},
		Transport: &api.Transport{LocalAddress: *local},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, HoldTime: 9, KeepaliveInterval: 3}},
	}}))

	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0})
	nexthop, _ := anypb.New(&api.NextHopAttribute{NextHop: *local})
	family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 {
			continue
		}
		if fields[0] == "quit" {
			break
		}
		if len(fields) != 2 || (fields[0] != "add" && fields[0] != "del") {
			out <- "error: expected add|del PREFIX"
			continue
		}
		prefix, err := netip.ParsePrefix(fields[1])
		if err != nil || !prefix.Addr().Is4() {
			out <- fmt.Sprintf("error: %q is not an IPv4 prefix", fields[1])
			continue
		}
		nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: prefix.Addr().String(), PrefixLen: uint32(prefix.Bits())})
		path := &api.Path{Family: family, Nlri: nlri, Pattrs: []*anypb.Any{origin, nexthop}}
		t0 := time.Now()
		if fields[0] == "add" {
			_, err = s.AddPath(ctx, &api.AddPathRequest{Path: path})
		} else {
			err = s.DeletePath(ctx, &api.DeletePathRequest{Family: family, Path: path})
		}
		took := time.Since(t0)
		if err != nil {
			out <- fmt.Sprintf("error: %s %s: %v", fields[0], prefix, err)
			continue
		}
		out <- fmt.Sprintf("ok %s %s %d", fields[0], prefix, took.Nanoseconds())
	}
	s.Stop()
	close(out)
	time.Sleep(50 * time.Millisecond)
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "refspeaker:", err)
		os.Exit(1)
	}
}
