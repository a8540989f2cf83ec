// Package faultproxy puts a Toxiproxy TCP proxy, run in-process, between a
// test's userd and its PostgreSQL, so that tests can cut the database
// connection, or freeze it, and bring it back without touching the shared
// server.
package faultproxy

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Proxy forwards to one PostgreSQL server.
type Proxy struct {
	t      testing.TB
	proxy  *toxiproxy.Proxy
	frozen bool
	// URL is the database URL rewritten to go through the proxy.
	URL string
}

// New starts a proxy in front of the server of databaseURL and returns it;
// it is stopped at cleanup.
func New(t testing.TB, databaseURL string) *Proxy {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		t.Fatalf("faultproxy: parse database URL: %v", err)
	}
	upstream := net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port)))
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(server, "postgres", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("faultproxy: start: %v", err)
	}
	t.Cleanup(p.Stop)
	u, err := url.Parse(databaseURL)
	if err != nil {
		t.Fatalf("faultproxy: database URL must be a URL: %v", err)
	}
	u.Host = p.Listen
	return &Proxy{t: t, proxy: p, URL: u.String()}
}

// Cut closes every proxied connection and refuses new ones, as if the
// database went away.
func (p *Proxy) Cut() { p.proxy.Stop() }

// Restore accepts connections again on the same address.
func (p *Proxy) Restore() {
	p.t.Helper()
	if err := p.proxy.Start(); err != nil {
		p.t.Fatalf("faultproxy: restart: %v", err)
	}
}

// frozenFor is the latency of the toxics that freeze the proxy: longer
// than any test, so nothing gets through until Thaw removes them.
const frozenFor = time.Hour

// Freeze stops forwarding in both directions but keeps every connection
// open, as when PostgreSQL's processes are stopped (SIGSTOP) or a network
// path silently drops everything: a query sent now gets no answer, and new
// connections are accepted but never get an answer either. Nothing is
// lost: what is sent meanwhile waits in the proxy and arrives, in order
// and followed by any close, at Thaw — as a stopped server reads its
// sockets when it continues.
//
// It is a Toxiproxy "latency" toxic of an hour on each direction. (The
// "timeout" toxic with timeout 0 drops the data instead and closes each
// connection as soon as the client closes its end, and "bandwidth" with
// rate 0 means unlimited: neither is a freeze.) A proxy still frozen when
// the test ends is thawed first, so that userd can stop.
func (p *Proxy) Freeze() {
	p.t.Helper()
	if p.frozen {
		p.t.Fatal("faultproxy: already frozen")
	}
	p.frozen = true
	p.t.Cleanup(func() {
		if p.frozen {
			p.Thaw()
		}
	})
	for _, stream := range []string{"upstream", "downstream"} {
		toxic := fmt.Sprintf(`{"name":"freeze_%s","type":"latency","stream":%q,"attributes":{"latency":%d}}`,
			stream, stream, frozenFor.Milliseconds())
		if _, err := p.proxy.Toxics.AddToxicJson(strings.NewReader(toxic)); err != nil {
			p.t.Fatalf("faultproxy: freeze %s: %v", stream, err)
		}
	}
}

// Thaw undoes Freeze: what waited in the proxy is delivered, then traffic
// flows again.
func (p *Proxy) Thaw() {
	p.t.Helper()
	if !p.frozen {
		p.t.Fatal("faultproxy: not frozen")
	}
	p.frozen = false
	for _, stream := range []string{"upstream", "downstream"} {
		if err := p.proxy.Toxics.RemoveToxic(context.Background(), "freeze_"+stream); err != nil {
			p.t.Fatalf("faultproxy: thaw %s: %v", stream, err)
		}
	}
}
