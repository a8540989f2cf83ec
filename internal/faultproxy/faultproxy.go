// Package faultproxy puts a Toxiproxy TCP proxy, run in-process, between a
// test's userd and its PostgreSQL, so that tests can cut the database
// connection and bring it back without touching the shared server.
package faultproxy

import (
	"context"
	"net"
	"net/url"
	"strconv"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Proxy forwards to one PostgreSQL server.
type Proxy struct {
	t     testing.TB
	proxy *toxiproxy.Proxy
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

// Ping reports whether the database answers through the proxy.
func (p *Proxy) Ping(ctx context.Context) error {
	conn, err := pgxpool.New(ctx, p.URL)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Ping(ctx)
}
