//go:build !linux

package store

import "os"

// startWriteback does nothing where sync_file_range is missing.
func startWriteback(*os.File, int64, int64) {}

// renameNoReplace is not available: the caller falls back to a check and
// a rename.
func renameNoReplace(string, string) error {
	return errNoRenameNoReplace
}
