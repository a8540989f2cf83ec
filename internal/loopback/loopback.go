// Package loopback finds free TCP ports on 127.0.0.1 below 32768. The
// kernel hands out ports above that (its ephemeral range) to outgoing
// connections, so a server told to listen on one found free a moment ago
// may find it taken by a client's connection — the embedded PostgreSQL
// once failed to start so under a load of tests.
package loopback

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// Listen listens on a random free port of 127.0.0.1 in [10000, 32768).
func Listen() (net.Listener, error) {
	var err error
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(10000+rand.IntN(32768-10000)))
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
	}
	return nil, fmt.Errorf("no free port on 127.0.0.1 below 32768: %w", err)
}

// FreePort returns a port of 127.0.0.1 below 32768 that was free just now.
func FreePort() (int, error) {
	ln, err := Listen()
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
