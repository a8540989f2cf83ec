package console

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

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
}

type usageBar struct {
	Day     string
	Label   string
	Spent   int64
	Granted int64
	X, Y, W int
	H       int
	// Top is the day's reasons that spent the most, for the table.
	Top string
}

const (
	chartHeight = 120
	barWidth    = 28
	barGap      = 8
	// topReasons is how many reasons the table names per day.
	topReasons = 3
)

// chartOf lays out days days from since (empty days included) from the
// day-and-reason sums.
func chartOf(us []users.DayReasonUsage, since time.Time, days int) *usageChart {
	c := &usageChart{Height: chartHeight + 20}
	byDay := map[string][]users.DayReasonUsage{}
	for _, u := range us {
		d := u.Day.UTC().Format(time.DateOnly)
		byDay[d] = append(byDay[d], u)
	}
	for i := range days {
		day := since.AddDate(0, 0, i)
		b := usageBar{Day: day.Format(time.DateOnly), Label: day.Format("01-02")}
		reasons := byDay[b.Day]
		for _, r := range reasons {
			b.Spent += r.Spent
			b.Granted += r.Granted
		}
		slices.SortFunc(reasons, func(a, b users.DayReasonUsage) int { return cmp.Compare(b.Spent, a.Spent) })
		var top []string
		for _, r := range reasons {
			if len(top) == topReasons || r.Spent == 0 {
				break
			}
			name := r.Reason
			if name == "" {
				name = "(no reason)"
			}
			top = append(top, name+" "+strconv.FormatInt(r.Spent, 10))
		}
		b.Top = strings.Join(top, ", ")
		c.Spent += b.Spent
		c.Granted += b.Granted
		c.Max = max(c.Max, b.Spent)
		c.Bars = append(c.Bars, b)
	}
	for i := range c.Bars {
		b := &c.Bars[i]
		h := 0
		if c.Max > 0 {
			h = int(b.Spent * chartHeight / c.Max)
		}
		if b.Spent > 0 && h < 2 {
			h = 2
		}
		b.X, b.Y, b.W, b.H = i*(barWidth+barGap), chartHeight-h, barWidth, h
	}
	c.Width = len(c.Bars) * (barWidth + barGap)
	return c
}
