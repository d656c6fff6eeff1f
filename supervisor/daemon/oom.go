package daemon

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
)

const oomScoreAdjPath = "/proc/self/oom_score_adj"

// setOOMScore writes score to the process's oom_score_adj. Lowering it needs
// CAP_SYS_RESOURCE; where that is denied the daemon warns once and keeps the
// score it has.
func setOOMScore(score int, log zerolog.Logger) error {
	current, err := readOOMScore()
	if err != nil {
		return err
	}
	if current == score {
		return nil
	}
	err = os.WriteFile(oomScoreAdjPath, []byte(strconv.Itoa(score)), 0)
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrPermission) && score < current {
		log.Warn().Int("oom_score", score).Int("kept", current).
			Msg("not allowed to lower oom_score_adj (needs CAP_SYS_RESOURCE), keeping the current score")
		return nil
	}
	return fmt.Errorf("set oom_score_adj to %d: %w", score, err)
}

func readOOMScore() (int, error) {
	b, err := os.ReadFile(oomScoreAdjPath)
	if err != nil {
		return 0, fmt.Errorf("read oom_score_adj: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse oom_score_adj %q: %w", b, err)
	}
	return n, nil
}
