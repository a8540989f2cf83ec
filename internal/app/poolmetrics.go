package app

import (
	"math"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/userd/userd/internal/standby"
	"github.com/userd/userd/internal/store"
)

// poolMetrics exports the pgx pool's statistics to Prometheus.
func poolMetrics(pool *pgxpool.Pool) prometheus.Collector {
	return poolCollector{pool: pool}
}

type poolCollector struct{ pool *pgxpool.Pool }

var (
	poolConns = prometheus.NewDesc("userd_db_pool_connections",
		"Database pool connections by state (idle, acquired, constructing).", []string{"state"}, nil)
	poolMax = prometheus.NewDesc("userd_db_pool_max_connections",
		"Largest size the database pool may grow to.", nil, nil)
	poolAcquires = prometheus.NewDesc("userd_db_pool_acquires_total",
		"Connections acquired from the pool.", nil, nil)
	poolEmptyAcquires = prometheus.NewDesc("userd_db_pool_empty_acquires_total",
		"Acquires that had to wait because the pool was empty.", nil, nil)
	poolAcquireWait = prometheus.NewDesc("userd_db_pool_acquire_wait_seconds_total",
		"Total time spent waiting for a pool connection.", nil, nil)
)

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConns, poolMax, poolAcquires, poolEmptyAcquires, poolAcquireWait} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(s.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolEmptyAcquires, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolAcquireWait, prometheus.CounterValue, s.AcquireDuration().Seconds())
}

// standbyMetrics exports the standbys' lag and where standby-eligible
// reads were served.
func standbyMetrics(r *standby.Router) prometheus.Collector {
	return standbyCollector{r: r}
}

type standbyCollector struct{ r *standby.Router }

var (
	standbyUp = prometheus.NewDesc("userd_db_standby_up",
		"1 when the standby answered its last probe and is in recovery (it may serve reads), else 0.", []string{"standby"}, nil)
	standbyLag = prometheus.NewDesc("userd_db_standby_lag_seconds",
		"How stale the standby's data is at most: time since the newest sample of the primary's WAL position it has replayed (probe granularity: MaxLag/4, at most 250 ms).", []string{"standby"}, nil)
	standbyBehind = prometheus.NewDesc("userd_db_standby_replay_behind_bytes",
		"WAL bytes between the primary's last sampled position and the standby's replay position.", []string{"standby"}, nil)
	standbyReads = prometheus.NewDesc("userd_db_standby_eligible_reads_total",
		"Reads that a standby could serve, by who served them (standby, primary) and why the primary did (no_standby, lagging, token_wait, error).", []string{"served_by", "reason"}, nil)
)

func (standbyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{standbyUp, standbyLag, standbyBehind, standbyReads} {
		ch <- d
	}
}

func (c standbyCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.r.Standbys() {
		up := 0.0
		if s.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(standbyUp, prometheus.GaugeValue, up, s.Name)
		if s.Known {
			lag := s.Lag.Seconds()
			if s.Lag == standby.UnknownLag {
				lag = math.Inf(1)
			}
			ch <- prometheus.MustNewConstMetric(standbyLag, prometheus.GaugeValue, lag, s.Name)
			ch <- prometheus.MustNewConstMetric(standbyBehind, prometheus.GaugeValue, float64(s.BehindBytes), s.Name)
		}
	}
	c.r.Served(func(by, reason string, n uint64) {
		ch <- prometheus.MustNewConstMetric(standbyReads, prometheus.CounterValue, float64(n), by, reason)
	})
}

// readCacheMetrics exports what the read cache did
// (internal/store/readcache.go).
func readCacheMetrics(c *store.ReadCache) prometheus.Collector {
	return readCacheCollector{c: c}
}

type readCacheCollector struct{ c *store.ReadCache }

var (
	readCacheReads = prometheus.NewDesc("userd_read_cache_reads_total",
		"Reads of a user by Clerk id, by whether the read cache answered them (hit) or the database did (miss).", []string{"result"}, nil)
	readCacheFills = prometheus.NewDesc("userd_read_cache_fills_skipped_total",
		"Rows read from the database that the read cache did not keep: refused (an eviction hit the row's shard while it was read) or time_dependent (expiring credits).", []string{"reason"}, nil)
	readCacheEvictions = prometheus.NewDesc("userd_read_cache_evictions_total",
		"Rows the read cache dropped because their user changed.", nil, nil)
	readCacheEntries = prometheus.NewDesc("userd_read_cache_entries",
		"Rows the read cache keeps.", nil, nil)
)

func (readCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{readCacheReads, readCacheFills, readCacheEvictions, readCacheEntries} {
		ch <- d
	}
}

func (c readCacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.c.Stats()
	ch <- prometheus.MustNewConstMetric(readCacheReads, prometheus.CounterValue, float64(s.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(readCacheReads, prometheus.CounterValue, float64(s.Misses), "miss")
	ch <- prometheus.MustNewConstMetric(readCacheFills, prometheus.CounterValue, float64(s.Refused), "refused")
	ch <- prometheus.MustNewConstMetric(readCacheFills, prometheus.CounterValue, float64(s.NotCached), "time_dependent")
	ch <- prometheus.MustNewConstMetric(readCacheEvictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(readCacheEntries, prometheus.GaugeValue, float64(s.Entries))
}
