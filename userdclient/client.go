// Package userdclient is the Go client of userd for other services: a
// gRPC connection to userd.v1.UserService that sends a service token on
// every call, bounds each call with a default deadline, retries
// UNAVAILABLE with exponential backoff (reusing the call's idempotency
// key, so a retried deduction is charged once), and typed errors
// (IsInsufficientCredits, IsNotFound, IsKeyReused, ...).
//
//	c, err := userdclient.New("userd:9090", userdclient.WithToken(os.Getenv("USERD_TOKEN")))
//	if err != nil { ... }
//	defer c.Close()
//	res, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{
//		ClerkUserId: "user_2abc", Amount: 3, IdempotencyKey: "render-" + jobID,
//	})
//	if required, available, ok := userdclient.IsInsufficientCredits(err); ok { ... }
//
// Deductions by action charge the price userd holds (SetPrice):
//
//	res, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{
//		ClerkUserId: "user_2abc", Action: "render", IdempotencyKey: "render-" + jobID,
//	})
//	if userdclient.IsUnknownAction(err) { ... }
//
// Importing it brings in gRPC and the generated stubs, nothing of the
// server (its test checks `go list -deps`).
package userdclient

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"iter"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// Defaults of New.
const (
	DefaultTimeout = 10 * time.Second
	DefaultRetries = 4
)

// Client is a connection to userd. Every UserService method is available
// (embedded); each call carries the token, the default deadline unless the
// context has one, and is retried on UNAVAILABLE.
type Client struct {
	userdv1.UserServiceClient
	conn *grpc.ClientConn
}

type options struct {
	token     string
	plaintext bool
	tls       *tls.Config
	timeout   time.Duration
	retries   uint
	dial      []grpc.DialOption
}

// Option configures New.
type Option func(*options)

// WithToken sends "Authorization: Bearer <token>" on every call: a service
// token of USERD_SERVICE_TOKENS (or an end user's session token).
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithInsecure connects without TLS: for local development, or when a
// sidecar or the network encrypts. Without it the connection uses TLS.
func WithInsecure() Option { return func(o *options) { o.plaintext = true } }

// WithTLS connects with this TLS configuration (default: the system's
// roots).
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithTimeout sets the deadline of calls whose context has none
// (DefaultTimeout; 0 for none). It covers the retries.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithRetries sets how often a call answered UNAVAILABLE is retried
// (DefaultRetries; 0 for never), with exponential backoff from 100ms to 2s.
func WithRetries(n uint) Option { return func(o *options) { o.retries = n } }

// WithDialOptions adds gRPC dial options (interceptors added here run
// inside the client's own, once per attempt).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// New returns a client of the userd at target ("host:port", or any gRPC
// target such as "dns:///userd.internal:9090"). It does not connect
// until the first call.
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout, retries: DefaultRetries}
	for _, opt := range opts {
		opt(&o)
	}
	if o.plaintext && o.tls != nil {
		return nil, errors.New("userdclient: WithInsecure and WithTLS exclude each other")
	}
	transport := credentials.NewTLS(o.tls)
	if o.plaintext {
		transport = insecure.NewCredentials()
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithChainUnaryInterceptor(
			defaultDeadline(o.timeout),
			idempotencyKeys,
			retry.UnaryClientInterceptor(
				retry.WithCodes(codes.Unavailable),
				retry.WithMax(o.retries),
				retry.WithBackoff(retry.BackoffExponentialWithJitterBounded(100*time.Millisecond, 0.2, 2*time.Second)),
			),
		),
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: o.token, secure: !o.plaintext}))
	}
	conn, err := grpc.NewClient(target, append(dial, o.dial...)...)
	if err != nil {
		return nil, err
	}
	return &Client{UserServiceClient: userdv1.NewUserServiceClient(conn), conn: conn}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// GetUserByClerkID returns the live user with this Clerk user id.
func (c *Client) GetUserByClerkID(ctx context.Context, clerkUserID string) (*userdv1.User, error) {
	return c.getUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: clerkUserID}})
}

// GetUserByID returns the live user with this userd id.
func (c *Client) GetUserByID(ctx context.Context, id string) (*userdv1.User, error) {
	return c.getUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Id{Id: id}})
}

// GetUserByEmail returns the live user with this primary email (compared
// case-insensitively).
func (c *Client) GetUserByEmail(ctx context.Context, email string) (*userdv1.User, error) {
	return c.getUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Email{Email: email}})
}

func (c *Client) getUser(ctx context.Context, req *userdv1.GetUserRequest) (*userdv1.User, error) {
	res, err := c.GetUser(ctx, req)
	if err != nil {
		return nil, err
	}
	return res.GetUser(), nil
}

// Transactions iterates over the user's whole ledger, newest first,
// fetching pages of pageSize (0: the server's default) as it goes. It
// stops at the first error, which it yields.
func (c *Client) Transactions(ctx context.Context, clerkUserID string, pageSize int32) iter.Seq2[*userdv1.CreditTransaction, error] {
	return pages(func(token string) ([]*userdv1.CreditTransaction, string, error) {
		page, err := c.ListCreditTransactions(ctx, &userdv1.ListCreditTransactionsRequest{
			ClerkUserId: clerkUserID, PageSize: pageSize, PageToken: token,
		})
		return page.GetTransactions(), page.GetNextPageToken(), err
	})
}

// Prices iterates over the price list by action, fetching pages of
// pageSize (0: the server's default) as it goes; as Transactions.
func (c *Client) Prices(ctx context.Context, pageSize int32) iter.Seq2[*userdv1.Price, error] {
	return pages(func(token string) ([]*userdv1.Price, string, error) {
		page, err := c.ListPrices(ctx, &userdv1.ListPricesRequest{PageSize: pageSize, PageToken: token})
		return page.GetPrices(), page.GetNextPageToken(), err
	})
}

// PriceChanges iterates over the price list's audit history, newest first,
// of one action ("" for all); as Transactions.
func (c *Client) PriceChanges(ctx context.Context, action string, pageSize int32) iter.Seq2[*userdv1.PriceChange, error] {
	return pages(func(token string) ([]*userdv1.PriceChange, string, error) {
		page, err := c.ListPriceChanges(ctx, &userdv1.ListPriceChangesRequest{Action: action, PageSize: pageSize, PageToken: token})
		return page.GetChanges(), page.GetNextPageToken(), err
	})
}

// pages iterates over the items of the pages fetch returns, from the
// first (token "") until one has no next token or fetch fails.
func pages[T any](fetch func(token string) ([]T, string, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		token := ""
		for {
			items, next, err := fetch(token)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, item := range items {
				if !yield(item, nil) {
					return
				}
			}
			if token = next; token == "" {
				return
			}
		}
	}
}

// bearer is the token as per-RPC credentials.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity keeps gRPC from sending the token in clear text
// unless the caller chose WithInsecure.
func (b bearer) RequireTransportSecurity() bool { return b.secure }

// defaultDeadline gives calls without a deadline one of d.
func defaultDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok && d > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// keyed is a request that carries an idempotency key.
type keyed interface {
	GetIdempotencyKey() string
}

// idempotencyKeys gives a keyed request without a key a random one before
// the first attempt, so that the retries of this call reuse it (and are
// applied at most once). The key is written into the request, where the
// caller can read it. Callers that retry on their own should set a key
// derived from their operation instead (a job id, a payment id).
//
// A key made here is this call's alone, so a response that says
// "replayed" can only come from one of this call's own retries, after an
// attempt that was applied but whose answer was lost: for the caller the
// change was made by this call, and the flag is cleared. With a key of the
// caller's, replayed means what userd says: the key had already applied
// the change before (this call or an earlier one).
func idempotencyKeys(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	generated := false
	if k, ok := req.(keyed); ok && k.GetIdempotencyKey() == "" {
		key := NewIdempotencyKey()
		switch r := req.(type) {
		case *userdv1.DeductCreditsRequest:
			r.IdempotencyKey, generated = key, true
		case *userdv1.GrantCreditsRequest:
			r.IdempotencyKey, generated = key, true
		case *userdv1.SetPlanRequest:
			r.IdempotencyKey, generated = key, true
		}
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err == nil && generated {
		switch r := reply.(type) {
		case *userdv1.DeductCreditsResponse:
			r.Replayed = false
		case *userdv1.GrantCreditsResponse:
			r.Replayed = false
		case *userdv1.SetPlanResponse:
			r.Replayed = false
		}
	}
	return err
}

// NewIdempotencyKey returns a random key ("uc-" and 32 hex digits).
func NewIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "uc-" + hex.EncodeToString(b[:])
}

// OrganizationTransactions iterates over an organization account's ledger,
// newest first (only member's entries when member is not ""), as
// Transactions does. With a session token, the organization must be the
// session's active one.
func (c *Client) OrganizationTransactions(ctx context.Context, clerkOrgID, member string, pageSize int32) iter.Seq2[*userdv1.CreditTransaction, error] {
	return pages(func(token string) ([]*userdv1.CreditTransaction, string, error) {
		page, err := c.ListCreditTransactions(ctx, &userdv1.ListCreditTransactionsRequest{
			ClerkOrganizationId: clerkOrgID, MemberClerkUserId: member, PageSize: pageSize, PageToken: token,
		})
		return page.GetTransactions(), page.GetNextPageToken(), err
	})
}
