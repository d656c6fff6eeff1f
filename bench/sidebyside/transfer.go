package sidebyside

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
)

// importName is the image `ctr images import --base-name bench/img` makes
// of the benchmark image.
const importName = "bench/img:" + imageRefName

// holdName is the image that holds the blob of an ingest round: its target
// is the blob's digest, so that the collector keeps the blob from its
// commit until the round removes it.
const holdName = "bench/ingest:hold"

// transferData is what the ctr transfer workloads feed the daemons: one
// directory for the run, an image tar made once and a blob made per round.
type transferData struct {
	dir       string
	imageTar  string
	imageSize int64
}

// newTransferData makes a temporary directory and the image tar in it.
func newTransferData(cfg Config) (*transferData, error) {
	dir, err := os.MkdirTemp("", "cbdata")
	if err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	td := &transferData{dir: dir, imageTar: filepath.Join(dir, "image.tar")}
	if td.imageSize, err = WriteImage(td.imageTar, cfg.LayerMiB*mib, 1); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return td, nil
}

func (td *transferData) close() error {
	if err := os.RemoveAll(td.dir); err != nil {
		return fmt.Errorf("remove data directory: %w", err)
	}
	return nil
}

// transferStats is what one transfer workload gave on one side over every
// round.
type transferStats struct {
	rates []float64 // MiB/s of each round
	cpu   CPU       // over every measured command
	mib   float64   // moved by every measured command
}

func (t *transferStats) add(mibs float64, wall time.Duration, cpu CPU) {
	t.rates = append(t.rates, mibs/wall.Seconds())
	t.cpu = t.cpu.Add(cpu)
	t.mib += mibs
}

// perMiB spreads d over the MiB moved, in milliseconds.
func (t *transferStats) perMiB(d time.Duration) float64 {
	if t.mib == 0 {
		return 0
	}
	return float64(d) / float64(time.Millisecond) / t.mib
}

// transferSet holds the stats of one transfer workload on both sides.
type transferSet map[*side]*transferStats

// newTransferSet returns empty stats for both sides.
func newTransferSet(ours, theirs *side) transferSet {
	return transferSet{ours: {}, theirs: {}}
}

// transfers runs the ctr workloads that move bytes: content ingest and get
// of a random blob, and images import without unpacking of the image tar,
// in rounds that alternate between the sides.
func (r *Report) transfers(ctx context.Context, cfg Config, ours, theirs *side) (err error) {
	td, err := newTransferData(cfg)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, td.close()) }()
	r.ImageTarSize = td.imageSize

	// Ingest and get a fresh blob each round, with ctr 1.6, and read it in
	// one Content.Read call with the Go client.
	ingest, get := newTransferSet(ours, theirs), newTransferSet(ours, theirs)
	read, raw := newTransferSet(ours, theirs), newTransferSet(ours, theirs)
	for round := range cfg.TransferRounds {
		blob := filepath.Join(td.dir, "blob")
		digest, err := WriteBlob(blob, cfg.BlobMiB*mib, uint64(round)+100)
		if err != nil {
			return err
		}
		for _, s := range sides(round, ours, theirs) {
			ref := fmt.Sprintf("bench-ingest-%d", round)
			if err := ingestRound(ctx, cfg, s, ref, blob, digest, ingest[s], get[s], read[s], raw[s]); err != nil {
				return fmt.Errorf("content ingest and get on %s: %w", s.daemon.Name, err)
			}
		}
	}
	size := fmt.Sprintf("%d MiB", cfg.BlobMiB)
	r.addTransfer("ctr 1.6 content ingest "+size, ingest, ours, theirs)
	r.addTransfer("ctr 1.6 content get "+size, get, ours, theirs)
	r.addTransfer("Go client Content.Read "+size+" in one call", read, ours, theirs)
	r.addTransfer("bare HTTP/2 client Content.Read "+size+" in one call", raw, ours, theirs)

	// Import the same tar each round, with each ctr.
	// ctr 2.x imports through the Transfer service unless told otherwise,
	// which our daemon does not serve.
	type importer struct {
		label, path string
		args        []string
	}
	ctrs := []importer{{"ctr 1.6", cfg.Ctr, nil}}
	if cfg.Ctr2 != "" {
		ctrs = append(ctrs, importer{"ctr 2.x --local", cfg.Ctr2, []string{"--local"}})
	}
	for _, c := range ctrs {
		imp := newTransferSet(ours, theirs)
		for round := range cfg.TransferRounds {
			for _, s := range sides(round, ours, theirs) {
				if err := importRound(ctx, c.path, c.args, s, td, imp[s]); err != nil {
					return fmt.Errorf("%s images import on %s: %w", c.label, s.daemon.Name, err)
				}
			}
		}
		label := fmt.Sprintf("%s images import --no-unpack, %d MiB layer", c.label, cfg.LayerMiB)
		r.addTransfer(label, imp, ours, theirs)
	}
	return nil
}

// ingestRound ingests the blob at path under ref, reads it back with ctr
// 1.6 and then in one Read call, timing all three, then removes it: record
// and bytes.
func ingestRound(
	ctx context.Context,
	cfg Config,
	s *side,
	ref, path, digest string,
	ingest, get, read, raw *transferStats,
) error {
	images := imagesapi.NewImagesClient(conn(s.client))
	size := cfg.BlobMiB * mib
	target := &types.Descriptor{MediaType: "application/octet-stream", Digest: digest, Size: size}
	_, err := images.Create(ctx, &imagesapi.CreateImageRequest{
		Image: &imagesapi.Image{Name: holdName, Target: target},
	})
	if err != nil {
		return fmt.Errorf("create image %s: %w", holdName, err)
	}

	// Ingest from the file and read back to /dev/null.
	in, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open blob: %w", err)
	}
	defer in.Close()
	wall, cpu, err := timeCtr(ctx, cfg.Ctr, s, in, nil, "content", "ingest",
		"--expected-size", fmt.Sprint(size), "--expected-digest", digest, ref)
	if err != nil {
		return err
	}
	ingest.add(float64(cfg.BlobMiB), wall, cpu)
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer null.Close()
	if wall, cpu, err = timeCtr(ctx, cfg.Ctr, s, nil, null, "content", "get", digest); err != nil {
		return err
	}
	get.add(float64(cfg.BlobMiB), wall, cpu)
	if wall, cpu, err = timeRead(ctx, s, digest, size, clientRead); err != nil {
		return err
	}
	read.add(float64(cfg.BlobMiB), wall, cpu)
	if wall, cpu, err = timeRead(ctx, s, digest, size, bareRead); err != nil {
		return err
	}
	raw.add(float64(cfg.BlobMiB), wall, cpu)

	// Remove the record, then the holding image with a synchronous
	// collection, which removes the bytes.
	if _, _, err := timeCtr(ctx, cfg.Ctr, s, nil, nil, "content", "rm", digest); err != nil {
		return err
	}
	if _, err := images.Delete(ctx, &imagesapi.DeleteImageRequest{Name: holdName, Sync: true}); err != nil {
		return fmt.Errorf("delete image %s: %w", holdName, err)
	}
	return nil
}

// importRound imports the image tar without unpacking with ctr and the
// extra flags, timing it, and removes the image with a synchronous collection.
func importRound(
	ctx context.Context,
	ctr string,
	extra []string,
	s *side,
	td *transferData,
	stats *transferStats,
) error {
	args := append([]string{"images", "import", "--no-unpack", "--base-name", "bench/img"}, extra...)
	wall, cpu, err := timeCtr(ctx, ctr, s, nil, nil, append(args, td.imageTar)...)
	if err != nil {
		return err
	}
	stats.add(float64(td.imageSize)/mib, wall, cpu)

	// Check the import made the image before removing it.
	images := imagesapi.NewImagesClient(conn(s.client))
	if _, err := images.Get(ctx, &imagesapi.GetImageRequest{Name: importName}); err != nil {
		return fmt.Errorf("get imported image %s: %w", importName, err)
	}
	if _, _, err := timeCtr(ctx, ctr, s, nil, nil, "images", "rm", "--sync", importName); err != nil {
		return err
	}
	return nil
}

// timeCtr runs `ctr --address <s> args...` with stdin and stdout (nil
// for none) and returns its wall time and the CPU time the daemon's
// processes spent meanwhile.
func timeCtr(
	ctx context.Context,
	ctr string,
	s *side,
	stdin, stdout *os.File,
	args ...string,
) (time.Duration, CPU, error) {
	before, err := s.daemon.CPU()
	if err != nil {
		return 0, CPU{}, err
	}
	cmd := exec.CommandContext(ctx, ctr, append([]string{"--address", s.daemon.Address}, args...)...)
	var out bytes.Buffer
	cmd.Stderr = &out
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if stdout != nil {
		cmd.Stdout = stdout
	} else {
		cmd.Stdout = &out
	}
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return 0, CPU{}, fmt.Errorf("run ctr %s on %s: %w\n%s\n%s daemon %s",
			strings.Join(args, " "), s.daemon.Name, err, out.Bytes(), s.daemon.Name, s.daemon.logTail())
	}
	after, err := s.daemon.CPU()
	if err != nil {
		return 0, CPU{}, err
	}
	return wall, after.Sub(before), nil
}

// timeRead times read, one Content.Read call for the whole blob of
// digest, and checks that it returned size bytes.
func timeRead(
	ctx context.Context,
	s *side,
	digest string,
	size int64,
	read func(context.Context, *side, string) (int64, error),
) (time.Duration, CPU, error) {
	before, err := s.daemon.CPU()
	if err != nil {
		return 0, CPU{}, err
	}
	start := time.Now()
	n, err := read(ctx, s, digest)
	wall := time.Since(start)
	if err != nil {
		return 0, CPU{}, fmt.Errorf("read %s on %s: %w", digest, s.daemon.Name, err)
	}
	if n != size {
		return 0, CPU{}, fmt.Errorf("read %s on %s: %d bytes, want %d", digest, s.daemon.Name, n, size)
	}
	after, err := s.daemon.CPU()
	if err != nil {
		return 0, CPU{}, err
	}
	return wall, after.Sub(before), nil
}

// clientRead reads the blob of digest with the Go client's connection, as
// a client of the streaming API does, and returns the data bytes.
func clientRead(ctx context.Context, s *side, digest string) (int64, error) {
	rc, err := contentapi.NewContentClient(conn(s.client)).Read(ctx, &contentapi.ReadContentRequest{Digest: digest})
	var n int64
	for err == nil {
		var resp *contentapi.ReadContentResponse
		if resp, err = rc.Recv(); err == nil {
			n += int64(len(resp.GetData()))
		}
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

// bareRead is rawRead on the daemon's socket, in namespace default.
func bareRead(ctx context.Context, s *side, digest string) (int64, error) {
	return rawRead(ctx, s.daemon.Address, "default", digest)
}

// addTransfer adds the rows of a transfer workload: throughput with its
// range over the rounds, and daemon CPU per MiB, split by process.
func (r *Report) addTransfer(name string, set transferSet, ours, theirs *side) {
	o, t := set[ours], set[theirs]
	r.Rows = append(r.Rows, Row{
		Name: name + ", throughput", Unit: "MiB/s",
		Ours: median(o.rates), Theirs: median(t.rates), Better: higher,
		OursRange: spread(o.rates), TheirsRange: spread(t.rates),
	})
	r.add(name+", daemon CPU per MiB, all processes",
		o.perMiB(o.cpu.Total()), t.perMiB(t.cpu.Total()), "ms", lower)
	r.add(name+", of which the main process",
		o.perMiB(o.cpu.Daemon), t.perMiB(t.cpu.Daemon), "ms", lower)
	for _, p := range byProcess(o.cpu) {
		r.add(fmt.Sprintf("%s, of which %s", name, p.label), o.perMiB(p.cpu), 0, "ms", lower)
	}
}
