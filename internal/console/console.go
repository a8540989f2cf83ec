// Package console is userd's operator console: server-rendered pages
// (html/template, assets embedded with embed.FS, no build step and no
// external resource) on a listener of its own (USERD_CONSOLE_ADDR, off by
// default), for operators who sign in with a Clerk session token and hold
// a console role (viewer or support).
//
// Pages: search (email prefix, Clerk user or organization id, organization
// slug, account id), an account (owner, plan and its history, balance,
// ledger paged by keyset and filtered by kind and member, usage by day and
// reason as an SVG chart with a table, the latest change-feed events,
// refreshed live), the price list, Clerk deliveries that were not applied,
// the sync jobs' last runs, and the audit log (and its CSV export).
//
// Corrections (support only): grant, deduct, set plan, close. Each needs
// a reason and carries an idempotency key the form was rendered with (a
// double submit applies once), calls the same users.Service methods as
// gRPC with a users.AuditEntry in the context, so that the store writes
// the audit row in the correction's own transaction.
//
// Security: a signed, short-lived session cookie (Secure, HttpOnly,
// SameSite=Strict); Go's http.CrossOriginProtection on every request (it
// refuses cross-origin unsafe methods); a strict Content-Security-Policy
// (default-src 'self'; frame-ancestors 'none'; no inline script or
// style), X-Frame-Options DENY and nosniff on every response; every value
// rendered through html/template's contextual escaping.
package console

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/errstatus"
	"github.com/userd/userd/internal/users"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Config configures the console.
type Config struct {
	// Verifier verifies operators' Clerk session tokens (required).
	Verifier *auth.SessionVerifier
	// OperatorsOrg, when set, is the Clerk organization whose members are
	// operators (see roleOf).
	OperatorsOrg string
	// SessionKey signs session cookies (random when empty).
	SessionKey string
	// SessionTTL is how long a sign-in lasts.
	SessionTTL time.Duration
	// Timeout bounds each request's work.
	Timeout time.Duration
	Log     *slog.Logger
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Server serves the console.
type Server struct {
	cfg      Config
	svc      *users.Service
	reads    *users.Console
	sessions *sessions
	pages    map[string]*template.Template
	log      *slog.Logger
}

// New returns the console over the domain service and its console reads.
func New(cfg Config, svc *users.Service, reads *users.Console) (*Server, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("console: a session token verifier is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 30 * time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ss, err := newSessions(cfg.SessionKey, cfg.SessionTTL, cfg.Now)
	if err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, svc: svc, reads: reads, sessions: ss, pages: pages, log: cfg.Log}, nil
}

// Handler returns the console's routes behind its security middleware.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /signin", s.signinPage)
	mux.HandleFunc("POST /signin", s.signin)
	mux.HandleFunc("POST /signout", s.signout)
	mux.Handle("GET /{$}", s.viewer(func(w http.ResponseWriter, r *http.Request, _ session) {
		http.Redirect(w, r, "/search", http.StatusSeeOther)
	}))
	mux.Handle("GET /search", s.viewer(s.search))
	mux.Handle("GET /accounts/{id}", s.viewer(s.account))
	mux.Handle("GET /accounts/{id}/events", s.viewer(s.accountEvents))
	mux.Handle("GET /accounts/{id}/usage", s.viewer(s.usage))
	mux.Handle("POST /accounts/{id}/grant", s.support(s.correct(users.AuditGrant)))
	mux.Handle("POST /accounts/{id}/deduct", s.support(s.correct(users.AuditDeduct)))
	mux.Handle("POST /accounts/{id}/plan", s.support(s.correct(users.AuditSetPlan)))
	mux.Handle("POST /accounts/{id}/close", s.support(s.correct(users.AuditClose)))
	mux.Handle("GET /prices", s.viewer(s.prices))
	mux.Handle("GET /webhooks", s.viewer(s.webhooks))
	mux.Handle("GET /sync", s.viewer(s.syncRuns))
	mux.Handle("GET /audit", s.viewer(s.audit))
	mux.Handle("GET /audit.csv", s.viewer(s.auditCSV))
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, http.StatusForbidden, "Cross-site request refused", "This form was sent from another site. Open the console and submit it from there.")
	}))
	return securityHeaders(cop.Handler(s.bounded(mux)))
}

// csp is the console's Content-Security-Policy: only its own scripts,
// styles and images, no inline code, no framing, forms only to itself.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

func (s *Server) bounded(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.Timeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

type handler func(w http.ResponseWriter, r *http.Request, ss session)

// viewer requires a signed-in operator of any role; anyone else is sent
// to sign in (pages) or refused (anything else), and sees nothing.
func (s *Server) viewer(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ss, ok := s.sessions.read(r)
		if !ok {
			if r.Method == http.MethodGet && r.Header.Get("Accept") != "application/json" {
				http.Redirect(w, r, "/signin", http.StatusSeeOther)
				return
			}
			s.fail(w, r, http.StatusUnauthorized, "Sign in first", "Your console session is missing or has expired.")
			return
		}
		h(w, r, ss)
	})
}

// support requires the support role.
func (s *Server) support(h handler) http.Handler {
	return s.viewer(func(w http.ResponseWriter, r *http.Request, ss session) {
		if ss.Role != RoleSupport {
			s.fail(w, r, http.StatusForbidden, "Not allowed", "Corrections need the support role; you are signed in as a viewer.")
			return
		}
		h(w, r, ss)
	})
}

// fail renders an error page that says what to do.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, title, msg string) {
	ss, _ := s.sessions.read(r)
	w.WriteHeader(status)
	s.render(w, r, "error", ss, title, map[string]any{"Message": msg, "Status": status})
}

// failErr renders a domain error: its message for the kinds a caller may
// see, a generic one (logged) for anything else.
func (s *Server) failErr(w http.ResponseWriter, r *http.Request, err error) {
	kind := apperr.KindOf(err)
	status := errstatus.HTTPStatus(kind)
	if ae, ok := apperr.As(err); ok && kind != apperr.KindInternal && kind != apperr.KindUnavailable {
		// The caller-facing message and field violations, never the
		// wrapped cause.
		msg := ae.Message
		if msg == "" {
			msg = kind.String()
		}
		for _, v := range ae.Violations {
			msg += "; " + v.Field + ": " + v.Description
		}
		s.fail(w, r, status, "Could not do that", msg)
		return
	}
	if kind == apperr.KindUnavailable {
		s.fail(w, r, status, "Try again", "The database did not answer in time. Try again in a moment.")
		return
	}
	s.log.Error("console request failed", "path", r.URL.Path, "err", err)
	s.fail(w, r, http.StatusInternalServerError, "Something went wrong", "The error was logged. Try again, or report it with the time it happened.")
}
