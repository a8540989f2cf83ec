package crud

import (
	"context"
	"fmt"
	"log"
	"net/url"
	"os"
	"sort"

	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/internal/pgembed"
)

// server is the PostgreSQL server the bench databases live on.
type server struct {
	url   string
	conn  *pgx.Conn
	dbs   []string
	extra func() // stops an embedded server
}

// openServer connects to -server, or starts an embedded PostgreSQL when no
// server answers there.
func openServer(ctx context.Context) (*server, error) {
	s := &server{url: *serverURL, extra: func() {}}
	var err error
	if s.conn, err = pgx.Connect(ctx, s.url); err == nil {
		return s, nil
	}
	dir, derr := os.MkdirTemp("", "userd-bench-pg")
	if derr != nil {
		return nil, derr
	}
	_ = os.Chmod(dir, 0o755)
	log.Printf("no PostgreSQL at %s (%v): using an embedded one", s.url, err)
	srv, err := pgembed.Start(ctx, pgembed.Config{DataDir: dir})
	if err != nil {
		return nil, err
	}
	s.extra = func() { _ = srv.Stop(); _ = os.RemoveAll(dir) }
	s.url = srv.URL
	if s.conn, err = pgx.Connect(ctx, s.url); err != nil {
		s.extra()
		return nil, err
	}
	return s, nil
}

// createDatabase creates a fresh database for one target and returns its
// URL; close drops it.
func (s *server) createDatabase(ctx context.Context, target string) (string, error) {
	name := fmt.Sprintf("userd_bench_%d_%d", os.Getpid(), len(s.dbs))
	if _, err := s.conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create the database of %s: %w", target, err)
	}
	s.dbs = append(s.dbs, name)
	u, _ := url.Parse(s.url)
	u.Path = "/" + name
	return u.String(), nil
}

func (s *server) close() {
	for _, name := range s.dbs {
		_, _ = s.conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
	_ = s.conn.Close(context.Background())
	s.extra()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// rates are the results' rates; a failed result (every call an error)
// counts as 0, not as a rate of errors.
func rates(rs []result) []float64 {
	return fields(rs, func(r result) float64 {
		if r.failed {
			return 0
		}
		return r.rps
	})
}

// allFailed reports results of which every one failed.
func allFailed(rs []result) bool {
	for _, r := range rs {
		if !r.failed {
			return false
		}
	}
	return len(rs) > 0
}

func fields(rs []result, f func(result) float64) []float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return xs
}

// field is the median of one figure over the rounds.
func field(rs []result, f func(result) float64) float64 {
	return median(fields(rs, f))
}
