// Command etcd is the etcd server, built from its published module for the test bed.
//
// etcd's own go.mod replaces its sibling modules with local paths, so it cannot be
// `go install`ed; depending on it from this wrapper module uses the published versions.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
