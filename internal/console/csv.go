package console

import (
	"encoding/csv"
	"net/http"
	"strconv"
	"strings"
)

// auditCSVMaxRows bounds one export.
const auditCSVMaxRows = 10000

// auditCSV exports the audit log (of one account, or all) as CSV, newest
// first, with every cell that a spreadsheet would run as a formula
// neutralised (csvCell).
func (s *Server) auditCSV(w http.ResponseWriter, r *http.Request, _ session) {
	id, before, err := auditFilter(r)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	rs, err := s.reads.AuditLog(r.Context(), id, before, auditCSVMaxRows)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="userd-audit.csv"`)
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"id", "time", "operator", "role", "action", "account_id", "details", "idempotency_key", "reason", "before", "after"})
	for _, a := range rs {
		row := []string{strconv.FormatInt(a.ID, 10), a.CreatedAt.UTC().Format("2006-01-02T15:04:05.000Z"), a.Operator, a.Role, a.Action,
			a.AccountID.String(), string(a.Details), a.IdempotencyKey, a.Reason, string(a.Before), string(a.After)}
		for i := range row {
			row[i] = csvCell(row[i])
		}
		_ = cw.Write(row)
	}
	cw.Flush()
}

// csvCell defuses CSV formula injection (OWASP): a cell starting with =,
// +, -, @, a tab or a carriage return is prefixed with a quote, so that a
// spreadsheet shows it as text instead of evaluating it.
func csvCell(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}
