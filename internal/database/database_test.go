package database_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/database"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
)

// TestJITIsOff: userd's connections run with PostgreSQL's JIT off (see
// store.DisableJIT), unless the database URL asks for it.
func TestJITIsOff(t *testing.T) {
	t.Parallel()
	url := testdb.URL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	for _, c := range []struct{ url, want string }{
		{url, "off"},
		{url + sep + "jit=on", "on"},
	} {
		db, err := database.Open(context.Background(), config.Database{URL: c.url, MaxConns: 2},
			store.SessionTimeouts{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		var jit string
		err = db.Pool.QueryRow(context.Background(), "SHOW jit").Scan(&jit)
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		if jit != c.want {
			t.Errorf("jit = %s with %s, want %s", jit, c.url, c.want)
		}
	}
}
