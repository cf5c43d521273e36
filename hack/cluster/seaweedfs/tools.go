//go:build tools

// Package seaweedfs pins the command hack/cluster.sh builds; nothing here is compiled.
package seaweedfs

import _ "github.com/seaweedfs/seaweedfs/weed"
