package typescript_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v82"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/stripehook"
)

// TestStripeNodeSignatureInterop: a Stripe-Signature header made by the
// stripe npm package's webhooks.generateTestHeaderString (what a Node
// service or Stripe's own tooling signs with) is accepted by a real userd's
// /webhooks/stripe, and the same header over another body is refused.
// Not parallel: it runs before TestTypeScriptClient and leaves node_modules
// installed for it.
func TestStripeNodeSignatureInterop(t *testing.T) {
	if testing.Short() {
		t.Skip("npm ci takes tens of seconds: not in -short (make test-fast)")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatal("npm not found: the interop check needs Node.js 20 or later with npm")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found")
	}
	if stale(t) {
		runNPM(t, npm, nil, "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	}
	const secret = "whsec_interop_secret_123"
	in := apptest.Start(t, func(c *config.Serve) { c.StripeWebhookSecrets = secret })
	payload, err := json.Marshal(map[string]any{
		"id": "evt_node_interop", "object": "event", "type": "customer.created", "api_version": stripe.APIVersion,
		"created": time.Now().Unix(), "data": map[string]any{"object": map[string]any{"id": "cus_node", "object": "customer"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "--input-type=module", "-e", `
import Stripe from "stripe";
const stripe = new Stripe("sk_test_interop");
process.stdout.write(stripe.webhooks.generateTestHeaderString({ payload: process.env.PAYLOAD, secret: process.env.SECRET }));
`)
	cmd.Env = append(os.Environ(), "PAYLOAD="+string(payload), "SECRET="+secret)
	header, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	if !strings.HasPrefix(string(header), "t=") || !strings.Contains(string(header), ",v1=") {
		t.Fatalf("header %q is not t=...,v1=...", header)
	}
	url := strings.TrimSuffix(in.WebhookURL, "/webhooks/clerk") + stripehook.Path
	post := func(body []byte) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", string(header))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(payload); code != http.StatusOK || !strings.Contains(body, "ignored") {
		t.Errorf("node-signed delivery: %d %s, want 200 ignored", code, body)
	}
	if code, body := post(bytes.Replace(payload, []byte("cus_node"), []byte("cus_evil"), 1)); code != http.StatusUnauthorized {
		t.Errorf("node header over another body: %d %s, want 401", code, body)
	}
}
