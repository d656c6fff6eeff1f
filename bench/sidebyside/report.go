package sidebyside

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"text/tabwriter"
)

// Better says which direction of a figure is the good one.
type Better string

// The two directions a figure can improve in.
const (
	lower  Better = "lower"
	higher Better = "higher"
)

// Row is one figure measured on both daemons.
type Row struct {
	// Name says what was measured.
	Name string
	// Unit is the unit of Ours and Theirs.
	Unit string
	// Ours is our daemon's figure; Theirs is containerd's.
	Ours, Theirs float64
	// Better says whether a lower or a higher figure is better.
	Better Better
	// OursRange and TheirsRange are the lowest and highest values over the
	// rounds, for figures that are a median of rounds; zero otherwise.
	OursRange, TheirsRange Range
}

// Range is the lowest and highest value a figure took over the rounds.
type Range struct {
	Min, Max float64
}

// spread returns the range of values.
func spread(values []float64) Range {
	if len(values) == 0 {
		return Range{}
	}
	return Range{Min: slices.Min(values), Max: slices.Max(values)}
}

// withRange formats v, followed by rg in brackets when rg spans more than
// one value.
func withRange(v float64, rg Range) string {
	if rg.Min == rg.Max {
		return number(v)
	}
	return fmt.Sprintf("%s (%s-%s)", number(v), number(rg.Min), number(rg.Max))
}

// Ratio is Ours/Theirs, or 0 when Theirs is 0.
func (r Row) Ratio() float64 {
	if r.Theirs == 0 {
		return 0
	}
	return r.Ours / r.Theirs
}

// Report holds every figure of one Run.
type Report struct {
	// Config is what the run used.
	Config Config
	// Rows are the figures in the order they were measured.
	Rows []Row
	// ImageTarSize is the size of the image tar the import workloads use.
	ImageTarSize int64
	// LoadBefore and LoadAfter are the 1-, 5- and 15-minute load averages
	// when the run started and ended: other work on the machine moves
	// every figure.
	LoadBefore, LoadAfter string
}

func (r *Report) add(name string, ours, theirs float64, unit string, better Better) {
	r.Rows = append(r.Rows, Row{Name: name, Unit: unit, Ours: ours, Theirs: theirs, Better: better})
}

// Row returns the row named name, if there is one.
func (r *Report) Row(name string) (Row, bool) {
	for _, row := range r.Rows {
		if row.Name == name {
			return row, true
		}
	}
	return Row{}, false
}

// Write prints the figures as a Markdown table, aligned for a terminal,
// after a line that says how they were measured.
func (r *Report) Write(w io.Writer) error {
	c := r.Config
	_, err := fmt.Fprintf(w, "%d CPUs, client %s; load average %s before, %s after\n"+
		"ctr runs %d; warm-up %d; %d rounds of %d sequential and %d %d-way calls, "+
		"%d images and %d containers present\n"+
		"ctr transfers: %d rounds, %d MiB blob, %.1f MiB image tar; median round (range)\n"+
		"daemon CPU from /proc utime+stime (%v ticks)\n\n",
		runtime.NumCPU(), runtime.Version(), r.LoadBefore, r.LoadAfter,
		c.CtrRuns, c.Warmup, c.Rounds, c.Calls, c.ParallelCalls, c.Workers,
		c.ListObjects, c.ListObjects, c.TransferRounds, c.BlobMiB, float64(r.ImageTarSize)/mib,
		clockTick)
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintln(tw, "| figure\t| unit\t| ours\t| containerd 1.6.20\t| ours/theirs\t| better\t|")
	fmt.Fprintln(tw, "| ---\t| ---\t| ---:\t| ---:\t| ---:\t| ---\t|")
	for _, row := range r.Rows {
		ratio := "-"
		if row.Theirs != 0 {
			ratio = fmt.Sprintf("%.2fx", row.Ratio())
		}
		fmt.Fprintf(tw, "| %s\t| %s\t| %s\t| %s\t| %s\t| %s\t|\n", row.Name, row.Unit,
			withRange(row.Ours, row.OursRange), withRange(row.Theirs, row.TheirsRange),
			ratio, row.Better)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// number formats a figure with precision that suits its size.
func number(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
