// Validates prometheus-operator objects (monitoring.coreos.com) read as a JSON array on
// stdin against the CRD schemas that @kubernetes-models/prometheus-operator ships; prints
// one line per object and exits 1 if any is invalid. Reads nothing from the network.
// Fields the CRD schema does not define pass, as the schema allows them (the API server
// prunes them from a structural schema's objects).
const GROUP = "monitoring.coreos.com";

const input = await new Promise((resolve, reject) => {
  let text = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
  process.stdin.on("error", reject);
});

let failed = false;
for (const object of JSON.parse(input)) {
  const [group, version] = String(object.apiVersion).split("/");
  const name = `${object.kind}/${object.metadata?.name}`;
  if (group !== GROUP || !/^[A-Za-z]+$/.test(object.kind ?? "") || !version) {
    console.log(`${name}: not a ${GROUP} object`);
    failed = true;
    continue;
  }
  let Model;
  try {
    ({ [object.kind]: Model } = await import(
      `@kubernetes-models/prometheus-operator/${group}/${version}/${object.kind}`
    ));
  } catch {
    console.log(`${name}: no schema for ${object.apiVersion} ${object.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`${name}: valid`);
  } catch (error) {
    console.log(`${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
