package metadata

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"

	plabels "corral.dev/pluginkit/labels"
)

// labelUpdate is a validated change to a set of labels: either a new set
// replacing the old one, or edits of single keys (an empty value deletes).
type labelUpdate struct {
	replace bool
	labels  map[string]string
	keys    []string
}

// parseLabelUpdate turns the labels and field paths of an update request
// into a labelUpdate. No paths, or the path "labels", replace all labels;
// "labels.<key>" sets or deletes one.
func parseLabelUpdate(labels map[string]string, paths []string) (labelUpdate, error) {
	u := labelUpdate{labels: labels, replace: len(paths) == 0}
	for _, p := range paths {
		key, isLabel := strings.CutPrefix(p, "labels.")
		switch {
		case p == "labels":
			u.replace = true
		case isLabel:
			u.keys = append(u.keys, key)
		default:
			return labelUpdate{}, fmt.Errorf("update field %q: %w", p, errdefs.ErrInvalidArgument)
		}
	}
	if u.replace {
		return u, plabels.ValidateAll(labels)
	}
	for _, k := range u.keys {
		if err := plabels.Validate(k, labels[k]); err != nil {
			return labelUpdate{}, err
		}
	}
	return u, nil
}

// apply writes the update to the labels bucket b.
func (u labelUpdate) apply(b *bolt.Bucket) error {
	if u.replace {
		if err := clearBucket(b); err != nil {
			return err
		}
		return putLabels(b, u.labels, true)
	}
	edits := make(map[string]string, len(u.keys))
	for _, k := range u.keys {
		edits[k] = u.labels[k]
	}
	return putLabels(b, edits, true)
}

// putLabels stores labels in b. With emptyDeletes, a label with an empty
// value is deleted instead of stored.
func putLabels(b *bolt.Bucket, labels map[string]string, emptyDeletes bool) error {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	for _, k := range keys {
		var err error
		if v := labels[k]; v == "" && emptyDeletes {
			err = b.Delete([]byte(k))
		} else {
			err = b.Put([]byte(k), []byte(v))
		}
		if err != nil {
			return fmt.Errorf("store label %q: %w", k, err)
		}
	}
	return nil
}

// readLabels returns the labels in b; a missing bucket has none.
func readLabels(b *bolt.Bucket) (map[string]string, error) {
	labels := map[string]string{}
	if b == nil {
		return labels, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		labels[string(k)] = string(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read labels: %w", err)
	}
	return labels, nil
}

func clearBucket(b *bolt.Bucket) error {
	var keys [][]byte
	if err := b.ForEach(func(k, _ []byte) error {
		keys = append(keys, bytes.Clone(k))
		return nil
	}); err != nil {
		return fmt.Errorf("list labels: %w", err)
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("delete label %q: %w", k, err)
		}
	}
	return nil
}
