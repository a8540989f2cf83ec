package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/config"
)

func valid() config.Serve {
	return config.Serve{
		Database:       config.Database{URL: "postgres://u:secretpw@localhost:5432/userd", MaxConns: 16},
		Log:            config.Log{LogFormat: "json", LogLevel: "info"},
		GRPCAddr:       ":9090",
		InitialCredits: 10,
		ShutdownGrace:  20 * time.Second,
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	if err := valid().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	cases := []struct {
		name   string
		change func(*config.Serve)
		want   string // the setting the message must name
	}{
		{"NoDatabaseURL", func(c *config.Serve) { c.Database.URL = "" }, "DATABASE_URL"},
		{"BadDatabaseURL", func(c *config.Serve) { c.Database.URL = "postgres://u:secretpw@host:notaport/db" }, "DATABASE_URL"},
		{"ZeroMaxConns", func(c *config.Serve) { c.Database.MaxConns = 0 }, "USERD_DB_MAX_CONNS"},
		{"BadGRPCAddr", func(c *config.Serve) { c.GRPCAddr = "9090" }, "USERD_GRPC_ADDR"},
		{"NegativeInitialCredits", func(c *config.Serve) { c.InitialCredits = -1 }, "USERD_INITIAL_CREDITS"},
		{"HugeInitialCredits", func(c *config.Serve) { c.InitialCredits = 1 << 62 }, "USERD_INITIAL_CREDITS"},
		{"NegativeGrace", func(c *config.Serve) { c.ShutdownGrace = -time.Second }, "USERD_SHUTDOWN_GRACE"},
		{"BadLogFormat", func(c *config.Serve) { c.LogFormat = "xml" }, "USERD_LOG_FORMAT"},
		{"BadLogLevel", func(c *config.Serve) { c.LogLevel = "loud" }, "USERD_LOG_LEVEL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.change(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s", err, tc.want)
			}
			if strings.Contains(err.Error(), "secretpw") {
				t.Errorf("error %q leaks the database password", err)
			}
		})
	}
}
