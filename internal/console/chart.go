package console

import (
	"strconv"

	"github.com/userd/userd/internal/users"
)

// usageChart is a bar chart of credits spent per day, drawn as inline SVG
// by the account template (no script), with the same figures in a table
// for screen readers and for reading exact values.
type usageChart struct {
	Bars    []usageBar
	Max     int64
	Spent   int64
	Granted int64
	Width   int
	Height  int
	// Reasons are the window's reasons that moved the most credits.
	Reasons []users.ReasonUsage
}

type usageBar struct {
	Day     string
	Label   string
	Spent   int64
	Granted int64
	X, Y, W int
	H       int
	// Top is the day's reasons, for the table.
	Top string
}

const (
	chartHeight = 120
	barWidth    = 28
	barGap      = 8
)

func chartOf(sum users.UsageSummary) *usageChart {
	c := &usageChart{Spent: sum.Spent, Granted: sum.Granted, Height: chartHeight + 20, Reasons: sum.Reasons}
	for _, p := range sum.Periods {
		if p.Spent > c.Max {
			c.Max = p.Spent
		}
	}
	for i, p := range sum.Periods {
		h := 0
		if c.Max > 0 {
			h = int(p.Spent * chartHeight / c.Max)
		}
		if p.Spent > 0 && h < 2 {
			h = 2
		}
		top := ""
		for j, r := range p.Reasons {
			if j > 0 {
				top += ", "
			}
			name := r.Reason
			if r.Other {
				name = "other"
			} else if name == "" {
				name = "(no reason)"
			}
			top += name + " " + strconv.FormatInt(r.Spent, 10)
		}
		c.Bars = append(c.Bars, usageBar{
			Day: p.Start.UTC().Format("2006-01-02"), Label: p.Start.UTC().Format("01-02"),
			Spent: p.Spent, Granted: p.Granted,
			X: i * (barWidth + barGap), Y: chartHeight - h, W: barWidth, H: h, Top: top,
		})
	}
	c.Width = len(c.Bars) * (barWidth + barGap)
	return c
}
