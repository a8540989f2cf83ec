package billing

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

var customerIDPattern = regexp.MustCompile(`^cus_[A-Za-z0-9]{1,250}$`)

// EnsureCustomerInput names the account whose Stripe customer is wanted.
type EnsureCustomerInput struct {
	Ref users.AccountRef
	// AdoptCustomerID, when set, links this existing Stripe customer
	// instead of creating one (a customer made before userd, e.g. by the
	// application userd replaces). It must not name another account in
	// its metadata.
	AdoptCustomerID string
	// Email is set on a customer userd creates (optional).
	Email string
}

// EnsureCustomer returns the Stripe customer of an account, creating it
// through Stripe's API (idempotency key "userd:customer:<account id>",
// metadata naming the account) or adopting in.AdoptCustomerID when the
// account has none. Concurrent calls end with one customer: the database
// links one customer to one account, and a loser returns the winner's.
// created says whether this call linked it.
func (s *Service) EnsureCustomer(ctx context.Context, in EnsureCustomerInput) (customerID string, created bool, err error) {
	if in.AdoptCustomerID != "" && !customerIDPattern.MatchString(in.AdoptCustomerID) {
		return "", false, apperr.InvalidArgument(apperr.FieldViolation{Field: "adopt_customer_id", Description: `must be a Stripe customer id ("cus_...")`})
	}
	acct, err := s.accounts.GetAccount(ctx, in.Ref)
	if err != nil {
		return "", false, err
	}
	if acct.ClosedAt != nil {
		return "", false, apperr.AccountClosed()
	}
	link, err := s.store.GetCustomerOfAccount(ctx, acct.ID)
	if err == nil {
		if in.AdoptCustomerID != "" && in.AdoptCustomerID != link.CustomerID {
			return "", false, apperr.Conflict("STRIPE_CUSTOMER_LINKED",
				fmt.Sprintf("the account is linked to Stripe customer %s already", link.CustomerID))
		}
		return link.CustomerID, false, nil
	}
	if !errors.Is(err, users.ErrNoRow) {
		return "", false, fmt.Errorf("read stripe customer: %w", err)
	}
	if s.stripe == nil {
		return "", false, errNoAPI()
	}
	ref := accountRef(acct)
	meta := accountMetadata(acct)
	var cust Customer
	if in.AdoptCustomerID != "" {
		cust, err = s.stripe.GetCustomer(ctx, in.AdoptCustomerID)
		if errors.Is(err, ErrNotFound) {
			return "", false, apperr.NotFound("no such Stripe customer")
		}
		if err != nil {
			return "", false, fmt.Errorf("get stripe customer: %w", err)
		}
		if other := cust.Metadata[MetaAccountID]; cust.Deleted || (other != "" && other != acct.ID.String()) {
			return "", false, apperr.Conflict("STRIPE_CUSTOMER_LINKED", "the Stripe customer is deleted or names another account")
		}
	} else {
		cust, err = s.stripe.CreateCustomer(ctx, NewCustomer{
			Email: in.Email, Metadata: meta, IdempotencyKey: "userd:customer:" + acct.ID.String(),
		})
		if err != nil {
			return "", false, fmt.Errorf("create stripe customer: %w", err)
		}
	}
	linked, got, err := s.link(ctx, Link{CustomerID: cust.ID, AccountID: acct.ID, Ref: ref})
	if err != nil {
		return "", false, err
	}
	return got, linked, nil
}

// link links a customer to an account; it returns whether this call
// linked them and the account's customer after the call, and fails
// Conflict when the customer is linked to another account.
func (s *Service) link(ctx context.Context, l Link) (bool, string, error) {
	linked, custAcct, acctCust, err := s.store.LinkCustomer(ctx, l)
	if err != nil {
		return false, "", fmt.Errorf("link stripe customer: %w", err)
	}
	if custAcct != l.AccountID {
		return false, "", apperr.Conflict("STRIPE_CUSTOMER_LINKED", fmt.Sprintf("Stripe customer %s is linked to another account", l.CustomerID))
	}
	return linked, acctCust, nil
}

func accountRef(a users.Account) users.AccountRef {
	return users.AccountRef{ClerkUserID: a.OwnerClerkUserID, ClerkOrgID: a.OwnerClerkOrgID}
}

func accountMetadata(a users.Account) map[string]string {
	m := map[string]string{MetaAccountID: a.ID.String()}
	if a.OwnerClerkOrgID != "" {
		m[MetaClerkOrgID] = a.OwnerClerkOrgID
	} else {
		m[MetaClerkUserID] = a.OwnerClerkUserID
	}
	return m
}

// refFromHints finds the account named by a Checkout Session's
// client_reference_id (a Clerk user id "user_..." or organization id
// "org_...") or by userd's metadata keys.
func refFromHints(clientReferenceID string, meta map[string]string) (users.AccountRef, bool) {
	switch {
	case meta[MetaClerkOrgID] != "":
		return users.AccountRef{ClerkOrgID: meta[MetaClerkOrgID]}, true
	case meta[MetaClerkUserID] != "":
		return users.AccountRef{ClerkUserID: meta[MetaClerkUserID]}, true
	case strings.HasPrefix(clientReferenceID, "org_"):
		return users.AccountRef{ClerkOrgID: clientReferenceID}, true
	case strings.HasPrefix(clientReferenceID, "user_"):
		return users.AccountRef{ClerkUserID: clientReferenceID}, true
	}
	return users.AccountRef{}, false
}

// errNotLinked is the error of an event of a customer no account claims
// (yet): Stripe retries it, and the Checkout Session's completion or an
// EnsureBillingCustomer call may link it meanwhile.
// reasonNotLinked is the reason of errNotLinked.
const reasonNotLinked = "STRIPE_CUSTOMER_NOT_LINKED"

func errNotLinked(customerID string) error {
	return &apperr.Error{Kind: apperr.KindFailedPrecondition, Reason: reasonNotLinked,
		Message: fmt.Sprintf("Stripe customer %s is linked to no account (EnsureBillingCustomer, or a Checkout Session with client_reference_id)", customerID)}
}

// resolveLink returns the customer's link, linking it first when the
// event's hints or the customer's metadata (fetched from Stripe) name an
// account.
func (s *Service) resolveLink(ctx context.Context, customerID, clientReferenceID string, meta map[string]string) (Link, error) {
	link, err := s.store.GetCustomer(ctx, customerID)
	if err == nil {
		return link, nil
	}
	if !errors.Is(err, users.ErrNoRow) {
		return Link{}, fmt.Errorf("read stripe customer: %w", err)
	}
	ref, ok := refFromHints(clientReferenceID, meta)
	if !ok && s.stripe != nil {
		cust, err := s.stripe.GetCustomer(ctx, customerID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return Link{}, fmt.Errorf("get stripe customer: %w", err)
		}
		if err == nil {
			ref, ok = refFromHints("", cust.Metadata)
		}
	}
	if !ok {
		return Link{}, errNotLinked(customerID)
	}
	acct, err := s.accounts.GetAccount(ctx, ref)
	if err != nil {
		return Link{}, fmt.Errorf("account of stripe customer %s: %w", customerID, err)
	}
	_, got, err := s.link(ctx, Link{CustomerID: customerID, AccountID: acct.ID, Ref: accountRef(acct)})
	if err != nil {
		return Link{}, err
	}
	if got != customerID {
		return Link{}, apperr.Conflict("STRIPE_CUSTOMER_LINKED",
			fmt.Sprintf("the account of Stripe customer %s is linked to customer %s", customerID, got))
	}
	return s.store.GetCustomer(ctx, customerID)
}

// CustomerOf returns the customer linked to an account ("" when none).
func (s *Service) CustomerOf(ctx context.Context, accountID uuid.UUID) (string, error) {
	l, err := s.store.GetCustomerOfAccount(ctx, accountID)
	if errors.Is(err, users.ErrNoRow) {
		return "", nil
	}
	return l.CustomerID, err
}
